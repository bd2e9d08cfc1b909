"""Replay of recorded frames, like a bag file: a folder with ``poses.json`` + images (+ optional depth/semantic
``.npy``), or a habitat-lab trajectory JSON (positions/rotations/actions) paired with still images.

``poses.json``::

    {"hfov": 90, "frames": [{"rgb": "rgb/000.png", "depth": "depth/000.npy", "semantic": null,
                             "position": [x, y, z], "rotation": [x, y, z, w], "action": "move_forward"}, ...]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.geometry import yaw_from_quat
from habitat_sim_bridge.sources.base import CameraIntrinsics, Frame, FrameSource


@dataclass
class RecordedPose:
    rgb: Path
    position: list[float]
    rotation: list[float]
    depth: Path | None = None
    semantic: Path | None = None
    action: str | None = None


def _vec(value: object, n: int, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
        raise BridgeError(f"{where} must be a list of {n} numbers, got {json.dumps(value)[:60]}")
    return [float(v) for v in value]


def load_habitat_trajectory(path: str | Path) -> list[tuple[list[float], list[float], str | None]]:
    """(position, rotation, action) per step of habitat-lab's ``habitat-sim_trajectory_data.json`` format."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"{path}: trajectory file not found")
    data = json.loads(path.read_text())
    for key in ("positions", "rotations"):
        if not isinstance(data.get(key), list):
            raise BridgeError(f"{path}: field '{key}' must be a list")
    if len(data["positions"]) != len(data["rotations"]):
        raise BridgeError(f"{path}: 'positions' and 'rotations' differ in length")
    actions = data.get("actions") or [None] * len(data["positions"])
    return [
        (_vec(p, 3, f"{path}: positions[{i}]"), _vec(r, 4, f"{path}: rotations[{i}]"), a)
        for i, (p, r, a) in enumerate(zip(data["positions"], data["rotations"], actions, strict=False))
    ]


class ReplaySource(FrameSource):
    """Frames in recorded order; ``render`` returns the recorded frame nearest to the asked pose."""

    can_move = False

    def __init__(self, poses: list[RecordedPose], hfov: float = 90.0):
        if not poses:
            raise BridgeError("replay has no frames")
        self.poses = poses
        self._cache: dict[Path, np.ndarray] = {}
        first = self._rgb(poses[0].rgb)
        self.intrinsics = CameraIntrinsics.from_hfov(first.shape[1], first.shape[0], hfov)

    @classmethod
    def from_dir(cls, root: str | Path) -> ReplaySource:
        root = Path(root)
        index = root / "poses.json"
        if not index.is_file():
            raise BridgeError(f"{root}: not a replay folder (no poses.json)")
        data = json.loads(index.read_text())
        frames = data.get("frames")
        if not isinstance(frames, list):
            raise BridgeError(f"{index}: field 'frames' must be a list")
        poses = []
        for i, f in enumerate(frames):
            where = f"{index}: frames[{i}]"
            if not isinstance(f, dict) or not isinstance(f.get("rgb"), str):
                raise BridgeError(f"{where}.rgb must be an image path")
            poses.append(
                RecordedPose(
                    rgb=root / f["rgb"],
                    position=_vec(f.get("position"), 3, f"{where}.position"),
                    rotation=_vec(f.get("rotation"), 4, f"{where}.rotation"),
                    depth=root / f["depth"] if f.get("depth") else None,
                    semantic=root / f["semantic"] if f.get("semantic") else None,
                    action=f.get("action"),
                )
            )
        return cls(poses, hfov=float(data.get("hfov", 90.0)))

    @classmethod
    def from_trajectory(cls, trajectory: str | Path, images: Sequence[str | Path], hfov: float = 90.0) -> ReplaySource:
        """Poses from a habitat-lab trajectory; each step shows the next of ``images`` (cycled)."""
        if not images:
            raise BridgeError("a trajectory replay needs at least one image")
        steps = load_habitat_trajectory(trajectory)
        return cls(
            [RecordedPose(Path(images[i % len(images)]), p, r, action=a) for i, (p, r, a) in enumerate(steps)],
            hfov=hfov,
        )

    def _rgb(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            if not path.is_file():
                raise BridgeError(f"{path}: replay image not found")
            self._cache[path] = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        return self._cache[path]

    def __len__(self) -> int:
        return len(self.poses)

    def frame(self, index: int) -> Frame:
        p = self.poses[index]
        rgb = self._rgb(p.rgb)
        depth = np.load(p.depth, allow_pickle=False).astype(np.float32) if p.depth else None
        semantic = np.load(p.semantic, allow_pickle=False).astype(np.int32) if p.semantic else None
        return Frame(
            rgb=rgb,
            depth=depth,
            semantic=semantic,
            intrinsics=self.intrinsics,
            position=list(p.position),
            rotation=list(p.rotation),
        )

    def nearest(self, position: Sequence[float], rotation: Sequence[float]) -> int:
        yaw = yaw_from_quat(rotation)

        def cost(i: int) -> float:
            p = self.poses[i]
            dyaw = abs((yaw_from_quat(p.rotation) - yaw + math.pi) % (2 * math.pi) - math.pi)
            return float(np.linalg.norm(np.subtract(p.position, position))) + 0.5 * dyaw

        return min(range(len(self.poses)), key=cost)

    def render(self, position: Sequence[float], rotation: Sequence[float]) -> Frame:
        return self.frame(self.nearest(position, rotation))
