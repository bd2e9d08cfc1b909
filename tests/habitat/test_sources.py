"""Driver (paths, actions, cmd_vel), replay source, ROS message conversion and the habitat-sim source."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
from PIL import Image

from habitat_sim_bridge.driver import Driver
from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.geometry import quat_from_yaw, yaw_from_quat
from habitat_sim_bridge.pipeline import SourceOptions, build_source, complete_rotations
from habitat_sim_bridge.sources.habitat import HabitatSimSource, habitat_sim_available
from habitat_sim_bridge.sources.replay import ReplaySource


def _path(n: int) -> list:
    return [([0.0, 0.0, -0.25 * i], quat_from_yaw(0.0)) for i in range(n)]


def test_driver_follows_paths_then_stops():
    d = Driver([_path(3), _path(2)], loop=False)
    poses = []
    while (p := d.next_pose()) is not None:
        poses.append((p.episode, p.step))
    assert poses == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    looped = Driver([_path(2)], loop=True)
    assert [looped.next_pose().step for _ in range(5)] == [0, 1, 0, 1, 0]


def test_driver_actions_and_cmd_vel():
    blocked = {(-0.0, -0.5)}
    d = Driver([_path(3)], is_navigable=lambda p: (round(p[0], 3), round(p[2], 3)) not in blocked)
    d.next_pose()
    assert d.act("move_forward") and d.current.position == pytest.approx([0, 0, -0.25])
    assert not d.act("move_forward")  # (0, -0.5) is not navigable: the agent stays
    assert d.current.position == pytest.approx([0, 0, -0.25])
    assert d.act("turn_left") and yaw_from_quat(d.current.rotation) == pytest.approx(math.radians(10))
    assert not d.act("fly")
    assert d.next_pose().position == pytest.approx([0, 0, -0.25])  # manual: the path waits
    d.set_twist(0.5, 0.0)
    p = d.next_pose(dt=0.5)
    yaw = math.radians(10)
    assert p.position == pytest.approx([-0.25 * math.sin(yaw), 0, -0.25 - 0.25 * math.cos(yaw)])
    assert d.act("stop") and d.next_pose().step == 1  # back on the path
    replay = Driver([_path(2)], can_move=False)
    replay.next_pose()
    assert not replay.act("move_forward") and not replay.set_twist(1.0, 0.0)


def test_complete_rotations_face_next_point():
    pts = complete_rotations([([0, 0, 0], None), ([1, 0, 0], None), ([1, 0, 0], None)])
    assert yaw_from_quat(pts[0][1]) == pytest.approx(-math.pi / 2)  # +x is to the right of -z
    assert pts[2][1] == pts[1][1]


def test_replay_dir(tmp_path):
    frames = []
    for i in range(3):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        np.save(tmp_path / f"{i}.npy", np.full((6, 8), 1.0 + i, np.float32))
        frames.append({"rgb": f"{i}.png", "depth": f"{i}.npy", "position": [0, 0, -i], "rotation": [0, 0, 0, 1]})
    (tmp_path / "poses.json").write_text(json.dumps({"hfov": 60, "frames": frames}))
    src, paths = build_source(SourceOptions(source="replay", replay_dir=str(tmp_path)))
    assert len(paths[0]) == 3 and not src.can_move
    f = src.frame(2)
    assert f.rgb.shape == (6, 8, 3) and f.rgb[0, 0, 0] == 80 and f.depth[0, 0] == 3.0
    assert src.render([0, 0, -0.9], [0, 0, 0, 1]).position == [0, 0, -1]  # nearest recorded pose
    assert src.intrinsics.hfov_deg == pytest.approx(60)
    (tmp_path / "poses.json").write_text(json.dumps({"frames": [{"rgb": "0.png", "position": [0, 0]}]}))
    with pytest.raises(BridgeError, match=r"frames\[0\]\.position must be a list of 3 numbers"):
        ReplaySource.from_dir(tmp_path)


def test_real_trajectory_replay(habitat_data):
    src = ReplaySource.from_trajectory(
        habitat_data / "habitat-sim_trajectory_data.json", [habitat_data / "van-gogh-room.color.png"]
    )
    assert len(src) == 58 and src.frame(0).rgb.shape == (240, 320, 3)
    assert src.poses[1].action == "move_forward"


def test_ros_message_conversion():
    pytest.importorskip("sensor_msgs", reason="ROS 2 wheels (requirements/ros.txt) are not installed")
    from std_msgs.msg import Header

    from habitat_sim_bridge import ros_msgs
    from habitat_sim_bridge.sources.base import CameraIntrinsics

    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    m = ros_msgs.rgb_msg(rgb, Header(frame_id="cam"))
    assert (m.encoding, m.step, m.width, m.height) == ("rgb8", 15, 5, 4)
    assert np.array_equal(np.frombuffer(bytes(m.data), np.uint8).reshape(4, 5, 3), rgb)
    depth = np.linspace(0, 3, 20, dtype=np.float32).reshape(4, 5)
    d = ros_msgs.depth_msg(depth, Header())
    assert d.encoding == "32FC1" and np.array_equal(np.frombuffer(bytes(d.data), np.float32).reshape(4, 5), depth)
    info = ros_msgs.camera_info_msg(CameraIntrinsics.from_hfov(320, 240, 90), Header())
    assert list(info.k) == pytest.approx([160.0, 0.0, 160.0, 0.0, 160.0, 120.0, 0.0, 0.0, 1.0])
    odom = ros_msgs.odometry_msg([1.0, 0.5, -2.0], quat_from_yaw(0.3), Header(frame_id="map"), "base_link")
    pose = odom.pose.pose if hasattr(odom, "child_frame_id") else odom.pose
    assert (pose.position.x, pose.position.y, pose.position.z) == pytest.approx((2.0, -1.0, 0.5))
    assert 2 * math.atan2(pose.orientation.z, pose.orientation.w) == pytest.approx(0.3)


# --------------------------------------------------------------------------- habitat-sim
def test_habitat_sim_real():
    reason = habitat_sim_available()
    if reason:
        pytest.skip(f"habitat-sim not installed here (no Linux wheel on PyPI; conda only): {reason}")
    import os

    scene = os.environ.get("HABITAT_TEST_SCENE")
    if not scene:
        pytest.skip("set HABITAT_TEST_SCENE to a .glb (e.g. habitat-test-scenes/van-gogh-room.glb) to run")
    with HabitatSimSource(scene, width=64, height=48) as src:
        f = src.render([0.0, 0.0, 0.0], quat_from_yaw(0.0))
    assert f.rgb.shape == (48, 64, 3) and f.depth.shape == (48, 64) and f.depth.dtype == np.float32


def _fake_habitat_sim(log: dict) -> dict[str, types.ModuleType]:
    """A stand-in with the documented habitat_sim API surface, recording how the source drives it."""

    class Obj:
        def __init__(self, *a, **k):
            self.args, self.kwargs = a, k

    hs = types.ModuleType("habitat_sim")
    hs.SimulatorConfiguration = Obj
    hs.CameraSensorSpec = Obj
    hs.SensorType = types.SimpleNamespace(COLOR="COLOR", DEPTH="DEPTH", SEMANTIC="SEMANTIC")
    hs.SensorSubType = types.SimpleNamespace(PINHOLE="PINHOLE")
    hs.AgentState = Obj
    hs.agent = types.SimpleNamespace(AgentConfiguration=Obj, ActionSpec=Obj, ActuationSpec=Obj)

    def configuration(backend, agents):
        log["backend"], log["agents"] = backend, agents
        return Obj()

    hs.Configuration = configuration

    class Agent:
        def set_state(self, state):
            log["state"] = state

    class Category:
        def name(self):
            return "Chair"

    class Sim:
        def __init__(self, cfg):
            self.pathfinder = types.SimpleNamespace(is_navigable=lambda p: bool(p[0] < 1))
            self.semantic_scene = types.SimpleNamespace(
                objects=[types.SimpleNamespace(category=Category(), semantic_id=7, aabb=None)]
            )

        def initialize_agent(self, i):
            return Agent()

        def get_sensor_observations(self):
            sem = np.zeros((48, 64), np.uint32)
            sem[10:20, 10:20] = 7
            return {"rgb": np.full((48, 64, 4), 9, np.uint8), "depth": np.ones((48, 64), np.float32), "semantic": sem}

        def close(self):
            log["closed"] = True

    hs.Simulator = Sim
    utils = types.ModuleType("habitat_sim.utils")
    common = types.ModuleType("habitat_sim.utils.common")
    common.quat_from_coeffs = lambda c: ("quat", tuple(float(v) for v in c))
    hs.utils = utils
    utils.common = common
    return {"habitat_sim": hs, "habitat_sim.utils": utils, "habitat_sim.utils.common": common}


def test_habitat_sim_source_against_api_stub(monkeypatch):
    log: dict = {}
    for name, mod in _fake_habitat_sim(log).items():
        monkeypatch.setitem(sys.modules, name, mod)
    src = HabitatSimSource("scene.glb", width=64, height=48, hfov=79.0, sensor_height=0.88)
    assert log["backend"].scene_id == "scene.glb" and log["backend"].enable_physics is False
    specs = log["agents"][0].sensor_specifications
    assert [s.uuid for s in specs] == ["rgb", "depth", "semantic"]
    assert all(s.resolution == [48, 64] and s.position == [0.0, 0.88, 0.0] and s.hfov == 79.0 for s in specs)
    q = quat_from_yaw(0.5)
    f = src.render([1.0, 0.1, 2.0], q)
    assert log["state"].rotation == ("quat", tuple(q))  # [x, y, z, w] coefficients, habitat's order
    assert f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8
    assert {i: o.category for i, o in f.objects.items()} == {7: "chair"}
    assert src.is_navigable([0.5, 0, 0]) and not src.is_navigable([2.0, 0, 0])
    src.close()
    assert log["closed"]
