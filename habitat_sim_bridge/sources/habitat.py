"""habitat-sim frames (``habitat_sim.Simulator``), for workstations where habitat-sim is installed (conda).

Written against habitat-sim's documented Python API (SimulatorConfiguration, CameraSensorSpec,
AgentConfiguration, Simulator.get_sensor_observations). It cannot be installed on the CI machines (no Linux wheel on
PyPI), so the module imports ``habitat_sim`` only when a source is created.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.sources.base import CameraIntrinsics, Frame, FrameSource, ObjectInfo


def habitat_sim_available() -> str | None:
    """None when ``import habitat_sim`` works, else why it does not."""
    try:
        importlib.import_module("habitat_sim")
    except Exception as exc:
        return f"habitat_sim is not importable ({type(exc).__name__}: {exc}); install it with conda"
    return None


class HabitatSimSource(FrameSource):
    """RGB, depth and semantic sensors on one agent; poses are set directly (teleport), as for path replay."""

    def __init__(
        self,
        scene: str,
        width: int = 320,
        height: int = 240,
        hfov: float = 90.0,
        sensor_height: float = 1.25,
        scene_dataset_config: str = "default",
        forward_step: float = 0.25,
        turn_angle: float = 10.0,
        gpu_device_id: int = 0,
    ):
        reason = habitat_sim_available()
        if reason:
            raise BridgeError(reason)
        hs = importlib.import_module("habitat_sim")
        self._hs = hs
        self._quat_from_coeffs = importlib.import_module("habitat_sim.utils.common").quat_from_coeffs
        backend = hs.SimulatorConfiguration()
        backend.scene_id = scene
        if scene_dataset_config and scene_dataset_config != "default":
            backend.scene_dataset_config_file = scene_dataset_config
        backend.enable_physics = False
        backend.gpu_device_id = gpu_device_id
        specs = []
        for uuid, kind in (
            ("rgb", hs.SensorType.COLOR),
            ("depth", hs.SensorType.DEPTH),
            ("semantic", hs.SensorType.SEMANTIC),
        ):
            spec = hs.CameraSensorSpec()
            spec.uuid = uuid
            spec.sensor_type = kind
            spec.sensor_subtype = hs.SensorSubType.PINHOLE
            spec.resolution = [height, width]
            spec.position = [0.0, sensor_height, 0.0]
            spec.hfov = hfov
            specs.append(spec)
        agent = hs.agent.AgentConfiguration()
        agent.sensor_specifications = specs
        agent.action_space = {
            "move_forward": hs.agent.ActionSpec("move_forward", hs.agent.ActuationSpec(amount=forward_step)),
            "turn_left": hs.agent.ActionSpec("turn_left", hs.agent.ActuationSpec(amount=turn_angle)),
            "turn_right": hs.agent.ActionSpec("turn_right", hs.agent.ActuationSpec(amount=turn_angle)),
        }
        try:
            self.sim = hs.Simulator(hs.Configuration(backend, [agent]))
        except Exception as exc:
            raise BridgeError(f"habitat-sim could not load scene {scene!r}: {exc}") from exc
        self.agent = self.sim.initialize_agent(0)
        self.intrinsics = CameraIntrinsics.from_hfov(width, height, hfov)
        self.objects = self._semantic_objects()

    def _semantic_objects(self) -> dict[int, ObjectInfo]:
        """Instance id -> category from the scene's semantic annotations (empty for unannotated scenes)."""
        out: dict[int, ObjectInfo] = {}
        scene = getattr(self.sim, "semantic_scene", None)
        for obj in getattr(scene, "objects", None) or []:
            if obj is None or obj.category is None:
                continue
            iid = int(getattr(obj, "semantic_id", 0))
            center = list(map(float, obj.aabb.center)) if getattr(obj, "aabb", None) is not None else []
            out[iid] = ObjectInfo(iid, obj.category.name().lower(), "", center)
        return out

    def is_navigable(self, position: Sequence[float]) -> bool:
        return bool(self.sim.pathfinder.is_navigable(np.asarray(position, dtype=np.float32)))

    def render(self, position: Sequence[float], rotation: Sequence[float]) -> Frame:
        state = self._hs.AgentState()
        state.position = np.asarray(position, dtype=np.float32)
        x, y, z, w = (float(v) for v in rotation)
        state.rotation = self._quat_from_coeffs(np.array([x, y, z, w]))  # coeffs are [x,y,z,w]
        self.agent.set_state(state)
        obs = self.sim.get_sensor_observations()
        semantic = obs.get("semantic")
        semantic = None if semantic is None else np.asarray(semantic).astype(np.int32)
        visible = set(np.unique(semantic).tolist()) if semantic is not None else set()
        return Frame(
            rgb=np.ascontiguousarray(np.asarray(obs["rgb"])[:, :, :3], dtype=np.uint8),
            depth=np.asarray(obs["depth"], dtype=np.float32),
            semantic=semantic,
            intrinsics=self.intrinsics,
            position=[float(v) for v in position],
            rotation=[x, y, z, w],
            objects={i: self.objects[i] for i in visible if i in self.objects},
        )

    def close(self) -> None:
        if getattr(self, "sim", None) is not None:
            self.sim.close()
            self.sim = None
