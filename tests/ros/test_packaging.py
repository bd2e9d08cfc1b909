"""What `ros2 launch ivl_ros captioner.launch.py` / `ros2 run` need from the package, checked in a built wheel
(the same data_files colcon's ament_python build installs), and the interfaces build script's idempotence."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile

import pytest

from tests.ros.conftest import REPO

SHARE = "ivl_ros-0.1.0.data/data/share"
CONSOLE_SCRIPTS = {"ivl-ros-launch": "ivl_ros.node.launcher:main", "ivl-ros-ask": "ivl_ros.node.ask:main",
                   "ivl_captioner": "ivl_ros.node.captioner:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("ivl_ros-*.whl")
    return zipfile.ZipFile(path)


def test_share_layout_for_ros2_launch(wheel):
    names = set(wheel.namelist())
    for needed in ("ament_index/resource_index/packages/ivl_ros", "ivl_ros/package.xml",
                   "ivl_ros/launch/captioner.launch.py", "ivl_ros/config/captioner.yaml"):
        assert f"{SHARE}/{needed}" in names, needed
    assert "ivl_ros/node/launch_spec.py" in names


def test_console_scripts(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    for name, target in CONSOLE_SCRIPTS.items():
        assert scripts.get(name) == target, f"setup.py console_scripts lacks {name} = {target}"


def test_setup_cfg_puts_node_executables_where_ros2_run_looks():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/ivl_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/ivl_ros"


def test_build_interfaces_script_is_idempotent():
    venv = REPO / ".venv"
    if sys.prefix != str(venv):
        pytest.skip("checks the project venv only")
    out = subprocess.run(["bash", str(REPO / "scripts" / "build_interfaces.sh"), str(venv)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
