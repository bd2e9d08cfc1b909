"""The bridge node in its own process, received by a separate rclpy subscriber process."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ros_env import REPO as ROOT
from tests.ros_env import allocate_domain, default_ros_env

BRIDGE_NODE = [sys.executable, "-m", "habitat_sim_bridge.node", "--ros-args"]
LISTEN = Path(__file__).parent / "procs" / "listen.py"

pytestmark = pytest.mark.ros


@functools.cache
def _domain() -> int:
    return allocate_domain()  # one for this module, taken on first use


def _env() -> dict:
    # Default ROS 2 settings, as a user's subscriber has; the bridge picks its own transport (ivl_ros.transport).
    return default_ros_env(_domain())


def _run(tmp_path: Path, params: list[str], expected: int, timeout: float = 40.0) -> dict:
    pytest.importorskip("rclpy", reason="ROS 2 wheels (requirements/ros.txt) are not installed")
    env = _env()
    out = tmp_path / "got.json"
    listener = subprocess.Popen(
        [sys.executable, str(LISTEN), str(out), str(expected), str(timeout)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    args = [
        *BRIDGE_NODE,
        "-p",
        "wait_for_subscribers:=1",
        "-p",
        "exit_when_done:=true",
        "-p",
        "loop:=false",
        "-p",
        "rate:=30.0",
    ]
    for p in params:
        args += ["-p", p]
    node = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node_out, _ = node.communicate(timeout=timeout + 10)
        listen_out, _ = listener.communicate(timeout=timeout + 10)
    finally:
        for proc in (node, listener):
            if proc.poll() is None:
                proc.kill()
    assert node.returncode == 0, node_out
    assert listener.returncode == 0, listen_out
    return json.loads(out.read_text())


def _check_common(got: dict, n: int) -> None:
    assert len(got["rgb"]) == n and len(got["info"]) == n and len(got["odom"]) == n
    for key in ("rgb", "info"):
        assert {m["frame_id"] for m in got[key]} == {"camera_optical_frame"}
    assert {m["frame_id"] for m in got["odom"]} == {"map"}
    for key in ("rgb", "info", "odom", "depth"):
        stamps = [m["stamp"] for m in got[key]]
        assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), key  # strictly increasing
    # every topic of one tick carries the same stamp
    assert [m["stamp"] for m in got["rgb"]] == [m["stamp"] for m in got["info"]] == [m["stamp"] for m in got["odom"]]
    for m in got["rgb"]:
        assert m["encoding"] == "rgb8" and m["step"] == m["w"] * 3 and m["bytes"] == m["h"] * m["step"]


def test_real_trajectory_replays_through_node(tmp_path, habitat_data):
    traj = json.loads((habitat_data / "habitat-sim_trajectory_data.json").read_text())
    n = len(traj["positions"])
    got = _run(
        tmp_path,
        [
            "source:=trajectory",
            f"trajectory:={habitat_data / 'habitat-sim_trajectory_data.json'}",
            f"images:=['{habitat_data / 'van-gogh-room.color.png'}']",
        ],
        expected=n,
    )
    _check_common(got, n)
    assert got["depth"] == []  # recorded stills have no depth; nothing fake is published
    assert {(m["w"], m["h"]) for m in got["rgb"]} == {(320, 240)}
    assert got["info"][0]["k"][0] == pytest.approx(160.0)  # hfov 90 at 320 px
    # nav_msgs/Odometry where its wheel is installed (requirements/habitat.txt), else geometry_msgs/PoseStamped
    odom_type = "Odometry" if importlib.util.find_spec("nav_msgs") else "PoseStamped"
    assert {m["type"] for m in got["odom"]} == {odom_type}
    if odom_type == "Odometry":
        assert {m["child"] for m in got["odom"]} == {"base_link"}
    # Habitat (x, y, z) -> ROS map (-z, -x, y), for every step of the real trajectory
    for m, p in zip(got["odom"], traj["positions"], strict=True):
        assert m["xyz"] == pytest.approx([-p[2], -p[0], p[1]], abs=1e-5)


def test_procedural_scene_publishes_depth(tmp_path, needs_osmesa):
    got = _run(tmp_path, ["source:=procedural", "seed:=4", "max_frames:=6", "width:=96", "height:=72"], expected=6)
    _check_common(got, 6)
    assert len(got["depth"]) == 6
    for m in got["depth"]:
        assert m["encoding"] == "32FC1" and m["step"] == 96 * 4 and m["bytes"] == 72 * 96 * 4
        assert 0.1 < m["depth_max"] < 12.0  # metres inside a room


def test_actions_and_cmd_vel_move_the_agent(tmp_path, needs_osmesa):
    pytest.importorskip("rclpy", reason="ROS 2 wheels (requirements/ros.txt) are not installed")
    env = _env()
    out = tmp_path / "teleop.json"
    teleop = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "procs" / "teleop.py"), str(out), "40", "2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node = subprocess.Popen(
        [
            *BRIDGE_NODE,
            "-p",
            "source:=procedural",
            "-p",
            "seed:=2",
            "-p",
            "width:=64",
            "-p",
            "height:=48",
            "-p",
            "rate:=20.0",
            "-p",
            "loop:=true",
            "-p",
            "wait_for_subscribers:=0",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        teleop_out, _ = teleop.communicate(timeout=50)
    finally:
        node.send_signal(2)  # SIGINT: the node must exit cleanly
        try:
            node_out, _ = node.communicate(timeout=15)
        finally:
            if node.poll() is None:
                node.kill()
    assert teleop.returncode == 0, teleop_out
    assert node.returncode == 0, node_out
    assert "Traceback" not in node_out, node_out
    r = json.loads(out.read_text())
    for step in ("after_turn", "after_turn2", "before_forward", "after_forward", "after_twist"):
        assert r.get(step) is not None, f"no odometry showed the effect of {step}: {r}"
    turn1, turn2, before, fwd, spun = (
        r[k] for k in ("after_turn", "after_turn2", "before_forward", "after_forward", "after_twist")
    )
    assert turn2[:2] == pytest.approx(turn1[:2], abs=1e-6)  # turning keeps the position
    dyaw = (turn2[2] - turn1[2] + 3.14159) % 6.28318 - 3.14159
    assert dyaw == pytest.approx(0.1745, abs=1e-3)  # 10 degrees
    # facing a navigable cell 0.25 m ahead (the teleop turned until it did), move_forward steps exactly there
    moved = ((fwd[0] - before[0]) ** 2 + (fwd[1] - before[1]) ** 2) ** 0.5
    assert moved == pytest.approx(0.25, abs=1e-4)
    assert fwd[2] == pytest.approx(before[2], abs=1e-6)  # and keeps the heading
    assert spun[:2] == pytest.approx(fwd[:2], abs=1e-6)  # cmd_vel angular.z turns in place
    assert abs((spun[2] - fwd[2] + 3.14159) % 6.28318 - 3.14159) > 0.2


def test_node_reports_bad_setup_without_traceback():
    pytest.importorskip("rclpy", reason="ROS 2 wheels (requirements/ros.txt) are not installed")
    args = [
        *BRIDGE_NODE,
        "-p",
        "source:=mesh",
        "-p",
        "scene:=/nonexistent/scene.glb",
    ]
    proc = subprocess.run(args, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "/nonexistent/scene.glb" in proc.stderr and "Traceback" not in proc.stderr
