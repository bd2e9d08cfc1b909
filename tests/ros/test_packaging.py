"""A non-editable install, as `ros2 run` / `ros2 launch` and a robot get it: the wheel is built, installed into a
scratch prefix (not the source tree), its layout checked, every module imported from it, and the launch file's
node list started from `<prefix>/lib/ivl_ros/` the way launch_ros does, then used by a default-configured client.

The scratch prefix is an install space like colcon's: `AMENT_PREFIX_PATH` names it, `python3` comes from PATH (the
project venv's interpreter, which has the dependencies), and the package is found through PYTHONPATH only.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import sysconfig
import types
import zipfile
from pathlib import Path

import pytest
import yaml

from ivl_ros import share
from ivl_ros.node import launch_spec
from tests.ros.conftest import REPO, Proc, RpcClient, assert_serves_a_default_client, ros_env, stub_launch_modules

PACKAGE = "ivl_ros"
EXECUTABLES = {spec.executable: spec.module for spec in launch_spec.NODES}
MARKER = f"share/ament_index/resource_index/packages/{PACKAGE}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = out.glob(f"{PACKAGE}-*.whl")
    return path


@pytest.fixture(scope="module")
def prefix(wheel, tmp_path_factory) -> Path:
    """The wheel installed into an empty prefix with pip (no editable install, no source tree)."""
    root = tmp_path_factory.mktemp("install")
    # --ignore-installed: without it pip uninstalls the project from the running venv before installing elsewhere.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--prefix",
            str(root),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    still = subprocess.run([sys.executable, "-m", "pip", "show", "-q", PACKAGE], capture_output=True)
    assert still.returncode == 0, "installing into the scratch prefix removed the project from this venv"
    return root


def site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def install_env(prefix: Path, domain: int, cwd: Path) -> dict[str, str]:
    """A sourced-install-space environment: default ROS 2 settings, the package only from the prefix."""
    env = ros_env(domain)
    env["PYTHONPATH"] = str(site_packages(prefix))  # not the source tree
    env["AMENT_PREFIX_PATH"] = str(prefix)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # python3 = the venv's, with the dependencies
    return env


def test_wheel_declares_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    for name, target in {
        "ivl": "ivl_ros.cli:main",
        "ivl-ros-launch": "ivl_ros.node.launcher:main",
        "ivl-ros-ask": "ivl_ros.node.ask:main",
        "ivl-ros-demo": "ivl_ros.node.demo:main",
    }.items():
        assert scripts.get(name) == target, f"setup.py console_scripts lacks {name} = {target}"


def test_install_layout_is_what_ros2_run_and_launch_need(prefix):
    assert (prefix / MARKER).is_file(), "ament index marker missing: ros2 cannot find the package"
    share = prefix / "share" / PACKAGE
    for needed in (
        "package.xml",
        "launch/captioner.launch.py",
        "config/captioner.yaml",
        "config/fastdds_image_subscriber.xml",
        "config/fastdds_image_publisher.xml",
    ):
        assert (share / needed).is_file(), needed
    for executable, module in EXECUTABLES.items():
        path = prefix / "lib" / PACKAGE / executable
        assert path.is_file(), f"{path} missing: ros2 run / launch_ros look there"
        assert path.stat().st_mode & 0o111, f"{path} is not executable"
        assert f"-m {module} " in path.read_text()
    for package_dir in (
        "ivl_ros",
        "ivl_ros/model",
        "ivl_ros/model/backends",
        "ivl_ros/node",
        "ivl_ros/eval",
        "habitat_sim_bridge",
        "habitat_sim_bridge/sources",
        "finetune",
        "export",
        "benchmarks",
    ):
        assert (site_packages(prefix) / package_dir / "__init__.py").is_file(), package_dir


def test_every_module_imports_from_the_install(prefix, tmp_path, domain):
    script = (
        "import importlib, pkgutil, sys\n"
        "import ivl_ros, habitat_sim_bridge\n"
        f"assert ivl_ros.__file__.startswith({str(site_packages(prefix))!r}), ivl_ros.__file__\n"
        "names = [m.name for p in (ivl_ros, habitat_sim_bridge)\n"
        "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "optional = {'triton', 'tensorrt', 'tensorrt_rtx'}  # GPU-only extras, imported by GPU-only modules\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name not in optional:\n"
        "            raise\n"
        "print(len(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=install_env(prefix, domain, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 40


def _launch_file_nodes(prefix: Path, monkeypatch, arguments: dict[str, str]) -> list:
    """Run the installed captioner.launch.py with recording stand-ins for launch/launch_ros (not on PyPI)."""
    stub_launch_modules(monkeypatch)
    launch_file = prefix / "share" / PACKAGE / "launch" / "captioner.launch.py"
    namespace: dict = {}
    exec(compile(launch_file.read_text(), str(launch_file), "exec"), namespace)
    entities = namespace["generate_launch_description"]()
    defaults = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    context = types.SimpleNamespace(launch_configurations={**defaults, **arguments})
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))  # as `source install/setup.bash` would
    monkeypatch.setattr(share, "is_source_checkout", lambda: False)  # resolve files as the installed package does
    return entities[-1].kwargs["function"](context)


def _launch_ros_command(node, prefix_path: str, tmp: Path) -> list[str]:
    """What launch_ros runs for a Node: the package's executable found through the ament index, the node name
    remapped, each parameters entry as a params file (dicts written to a YAML first)."""
    prefixes = [Path(p) for p in prefix_path.split(":") if p]
    (package_prefix,) = [p for p in prefixes if (p / MARKER).is_file()]
    cmd = [
        str(package_prefix / "lib" / node.kwargs["package"] / node.kwargs["executable"]),
        "--ros-args",
        "-r",
        f"__node:={node.kwargs['name']}",
    ]
    for i, entry in enumerate(node.kwargs["parameters"]):
        if isinstance(entry, dict):
            path = tmp / f"{node.kwargs['name']}_{i}.yaml"
            path.write_text(yaml.safe_dump({f"/**/{node.kwargs['name']}": {"ros__parameters": entry}}))
            entry = str(path)
        cmd += ["--params-file", entry]
    return cmd


def test_launch_file_nodes_run_from_the_install_and_serve_a_default_client(
    prefix, tmp_path, monkeypatch, domain, logs, tiny_ckpt
):
    nodes = _launch_file_nodes(
        prefix,
        monkeypatch,
        {
            "model_path": str(tiny_ckpt),
            "use_sim": "true",
            "caption_rate_hz": "5.0",
            "max_tiles": "1",
            "max_new_tokens": "8",
        },
    )
    assert [n.kwargs["executable"] for n in nodes] == ["ivl_captioner", "habitat_bridge"]
    assert Path(nodes[0].kwargs["parameters"][0]).is_relative_to(prefix / "share" / PACKAGE)
    env = install_env(prefix, domain, tmp_path)
    procs = [
        Proc(
            _launch_ros_command(n, env["AMENT_PREFIX_PATH"], tmp_path),
            env,
            logs / f"installed_{n.kwargs['name']}.log",
            cwd=tmp_path,
        )
        for n in nodes
    ]
    client = RpcClient(ros_env(domain), logs / "installed_client.log")  # default settings, source-tree client
    try:
        assert client.call("wait_ready")["model"]["model_loaded"] == "true", procs[0].log()
        assert_serves_a_default_client(client, "What is ahead?", caption_rate_hz=2.0)  # the bridge's frames
        # The node runs the installed package: it found its DDS profile in the install's share/, not the source.
        assert f"Fast DDS profile for images: {prefix}/share/{PACKAGE}/config" in procs[0].log()
    finally:
        client.close()
        codes = [p.stop() for p in procs]
    assert codes == [0, 0], [p.log() for p in procs]
    assert not any("Traceback" in p.log() for p in procs), [p.log() for p in procs]


def test_build_interfaces_script_is_idempotent():
    venv = REPO / ".venv"
    if Path(sys.prefix) != venv:
        pytest.skip("checks the project venv (scripts/setup.sh's) only")
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_interfaces.sh"), str(venv)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
