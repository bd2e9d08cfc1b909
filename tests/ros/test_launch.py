"""Both launch paths: launch_spec, the pip launcher for real (start, use, SIGINT), the .launch.py file with
stand-ins for launch/launch_ros (not installable from PyPI), the YAML and the ask client."""

from __future__ import annotations

import ast
import base64
import json
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from ivl_ros.node import launch_spec, launcher
from ivl_ros.node.params import defaults
from tests.ros.conftest import (
    REPO,
    Proc,
    assert_serves_a_default_client,
    publish_until_logged,
    ros_env,
    stub_launch_modules,
    wait_captions,
)

LAUNCH_FILE = REPO / "launch" / "captioner.launch.py"
CONFIG = REPO / "config" / "captioner.yaml"


def test_yaml_holds_every_parameter_with_its_default():
    data = yaml.safe_load(CONFIG.read_text())
    assert data["/**/ivl_captioner"]["ros__parameters"] == defaults()


def test_plan_applies_arguments_and_conditions(tmp_path):
    nodes = launch_spec.plan(
        {"model_path": "/m", "image_topics": "['/cam/image_raw']", "caption_rate_hz": "2", "compressed": "true"}
    )
    assert [n.spec.name for n in nodes] == ["ivl_captioner"]
    assert nodes[0].overrides == {
        "model_path": "/m",
        "image_topics": ["/cam/image_raw"],
        "caption_rate_hz": 2.0,
        "compressed": True,
    }
    assert nodes[0].params_file.samefile(CONFIG)
    sim = launch_spec.plan({"use_sim": "true", "camera_topic": "/x", "backend": ""})
    assert [n.spec.name for n in sim] == ["ivl_captioner", "habitat_bridge"]
    assert sim[0].overrides == {"image_topics": ["/x"]}
    for bad, message in [
        ({"max_tiles": "many"}, "must be int"),
        ({"use_sim": "maybe"}, "true or false"),
        ({"nonsense": "1"}, "unknown launch argument"),
        ({"image_topics": "[1]"}, "list of topic"),
        ({"params_file": str(tmp_path / "none.yaml")}, "does not exist"),
    ]:
        with pytest.raises(launch_spec.LaunchError, match=message):
            launch_spec.plan(bad)


def test_launch_file_ast_reads_launch_spec():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("launch_ros.actions", "Node") in imports and ("ivl_ros.node", "launch_spec") in imports
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_launch_file_builds_the_same_nodes(monkeypatch):
    if "launch_ros" not in sys.modules:
        stub_launch_modules(monkeypatch)
    namespace: dict = {}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec"), namespace)
    entities = namespace["generate_launch_description"]()
    kinds = [type(e).__name__ for e in entities]
    assert kinds[-1] == "OpaqueFunction"
    declared = {e.args[0] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert declared == set(launch_spec.LAUNCH_ARGUMENTS)
    context = types.SimpleNamespace(
        launch_configurations={
            **{k: v for k, (v, _) in launch_spec.LAUNCH_ARGUMENTS.items()},
            "model_path": "/m",
            "use_sim": "true",
            "caption_rate_hz": "2.5",
        }
    )
    nodes = entities[-1].kwargs["function"](context)
    assert [n.kwargs["executable"] for n in nodes] == ["ivl_captioner", "habitat_bridge"]
    assert nodes[0].kwargs["name"] == "ivl_captioner" and nodes[0].kwargs["package"] == "ivl_ros"
    assert nodes[0].kwargs["parameters"][1:] == [{"model_path": "/m", "caption_rate_hz": 2.5}]
    assert Path(nodes[0].kwargs["parameters"][0]).samefile(CONFIG)
    assert "additional_env" not in nodes[0].kwargs  # each node picks its own DDS transport (ivl_ros.transport)


def test_supervise_stops_everything_when_a_child_dies():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    crasher = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert launcher.supervise({"sleeper": sleeper, "crasher": crasher}, []) == 3
    # Stopped, not done: its sleep would end with 0; a SIGINT gives -2, or 1 when it lands during interpreter start-up.
    assert sleeper.poll() is not None and sleeper.returncode != 0, sleeper.returncode


def test_launcher_reports_bad_arguments(capsys):
    assert launcher.main(["captioner", "max_tiles:=lots"]) == 2
    assert "max_tiles:='lots' must be int" in capsys.readouterr().err
    assert launcher.main(["captioner", "model_path"]) == 2


def test_pip_launcher_runs_compressed_cameras_and_stops_on_sigint(tiny_ckpt, domain, logs, client):
    env = ros_env(domain)  # default ROS 2 settings: the launcher, its nodes and the ask client add nothing
    proc = Proc(
        [
            sys.executable,
            "-m",
            "ivl_ros.node.launcher",
            "captioner",
            f"model_path:={tiny_ckpt}",
            "image_topics:=['/cam/image_raw']",
            "compressed:=true",
            "caption_rate_hz:=20.0",
            "max_tiles:=1",
            "max_new_tokens:=8",
        ],
        env,
        logs / "launcher.log",
    )
    try:
        assert client.call("wait_ready")["model"]["model_loaded"] == "true", proc.log()
        assert client.call("get_params", names=["caption_rate_hz", "image_topics", "compressed"]) == {
            "caption_rate_hz": 20.0,
            "image_topics": ["/cam/image_raw"],
            "compressed": True,
        }
        corrupt = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(200)).decode()
        compressed = "/cam/image_raw/compressed"
        publish_until_logged(
            client, proc, "publish_compressed", "cannot be decoded", topic=compressed, data_b64=corrupt
        )
        publish_until_logged(
            client, proc, "publish_compressed", "compressed image has no data", topic=compressed, fmt="png", data_b64=""
        )
        client.call("captions")
        client.call("publish_compressed", topic="/cam/image_raw/compressed", seed=4, frame_id="jpeg-frame")
        caps = wait_captions(client, lambda got: len(got) >= 1)
        assert caps[0]["camera"] == "/cam/image_raw" and caps[0]["frame_id"] == "jpeg-frame"
        described = client.call("describe", question="What is here?")
        assert described["success"] and described["feedback"], described
        assert client.call("set_params", values={"max_tiles": 2})[0]["successful"]
        assert client.call("get_params", names=["max_tiles"]) == {"max_tiles": 2}
        asked = subprocess.run(
            [sys.executable, "-m", "ivl_ros.node.ask", "What is here?", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["success"]
        streamed = subprocess.run(
            [sys.executable, "-m", "ivl_ros.node.ask", "What is here?", "--stream"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert streamed.returncode == 0 and streamed.stdout.strip(), streamed.stderr
    finally:
        code = proc.stop(signal.SIGINT, timeout=20)
    log = proc.log()
    assert code == 0, log
    assert "Traceback" not in log
    assert "started ivl_captioner" in log


def test_demo_serves_a_default_configured_client(domain, logs, client):
    """`ivl-ros-demo` (the main job): the launcher, the Habitat bridge and the captioner on the embedded demo model;
    a default-configured process gets captions, answers, Describe feedback and parameter changes from it."""
    demo = Proc(
        [sys.executable, "-m", "ivl_ros.node.demo", "--captions", "100000", "--timeout", "3600"],
        ros_env(domain),
        logs / "demo.log",
    )
    try:
        assert client.call("wait_ready")["model"]["model_loaded"] == "true", demo.log()
        assert_serves_a_default_client(client, "What is in the room?", caption_rate_hz=3.0)
        demo.wait_log("[frame ")  # the demo's own subscriber prints the captions too
    finally:
        code = demo.stop(signal.SIGINT, timeout=60)
    assert code in (0, 130), demo.log()  # 130: stopped by Ctrl-C before its caption count, as here
    assert "Traceback" not in demo.log(), demo.log()
