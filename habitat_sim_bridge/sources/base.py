"""The frame source interface: an agent pose in, RGB + depth + instance ids + intrinsics out."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """A pinhole camera (no distortion); pixel centres at integer coordinates + 0.5, as OpenGL renders them."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_hfov(cls, width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """Habitat's sensors are specified by horizontal FOV with square pixels."""
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(width, height, f, f, width / 2.0, height / 2.0)

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.width / 2.0 / self.fx))

    @property
    def k(self) -> list[float]:
        """Row-major 3x3 K, the CameraInfo ``k`` field."""
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}


@dataclass
class ObjectInfo:
    """Ground truth for one instance id of the semantic map."""

    instance_id: int
    category: str
    color: str = ""  # a colour/material word for captions ("red", "wooden"); empty when unknown
    position: list[float] = field(default_factory=list)


@dataclass
class Frame:
    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray | None  # HxW float32 metres along the optical axis, 0 where nothing was hit
    semantic: np.ndarray | None  # HxW int32 instance ids, 0 = unlabelled
    intrinsics: CameraIntrinsics
    position: list[float]
    rotation: list[float]
    objects: dict[int, ObjectInfo] = field(default_factory=dict)  # instance id -> ground truth


class FrameSource(ABC):
    """Renders (or replays) frames at agent poses; y-up Habitat world coordinates throughout."""

    intrinsics: CameraIntrinsics
    #: whether arbitrary poses can be rendered (False for replayed recordings)
    can_move: bool = True

    @abstractmethod
    def render(self, position: Sequence[float], rotation: Sequence[float]) -> Frame:
        """The frame seen by an agent standing at ``position`` (floor level) with heading ``rotation``."""

    def is_navigable(self, position: Sequence[float]) -> bool:
        """Whether the agent may stand at ``position``; sources without a navmesh allow everything."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing to release
        """Release renderer resources."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
