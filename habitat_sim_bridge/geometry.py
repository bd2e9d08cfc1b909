"""Pose maths in Habitat's convention: y up, metres, the agent and camera look along -z, quaternions [x, y, z, w]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Quat = list[float]


def quat_from_yaw(yaw: float) -> Quat:
    """Rotation of ``yaw`` radians about +y (counter-clockwise seen from above)."""
    return [0.0, math.sin(yaw / 2.0), 0.0, math.cos(yaw / 2.0)]


def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w) or 1.0
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_from_quat(q: Sequence[float]) -> float:
    """Heading of a rotation: the yaw whose forward vector matches the rotated -z, projected on the floor."""
    fwd = quat_to_matrix(q) @ np.array([0.0, 0.0, -1.0])
    return math.atan2(-fwd[0], -fwd[2])


def forward_vector(yaw: float) -> np.ndarray:
    return np.array([-math.sin(yaw), 0.0, -math.cos(yaw)])


def yaw_towards(src: Sequence[float], dst: Sequence[float]) -> float:
    """The yaw that makes an agent at ``src`` face ``dst`` (on the floor plane)."""
    dx, dz = float(dst[0]) - float(src[0]), float(dst[2]) - float(src[2])
    return math.atan2(-dx, -dz)


def camera_pose(position: Sequence[float], rotation: Sequence[float], sensor_height: float) -> np.ndarray:
    """4x4 world-from-camera for a camera ``sensor_height`` above the agent (OpenGL axes, like Habitat's)."""
    pose = np.eye(4)
    pose[:3, :3] = quat_to_matrix(rotation)
    pose[:3, 3] = np.asarray(position, dtype=float) + np.array([0.0, sensor_height, 0.0])
    return pose


def poses_along(points: Sequence[Sequence[float]], final_yaw: float | None = None) -> list[tuple[list, Quat]]:
    """Attach headings to a polyline: each point faces the next one; the last keeps ``final_yaw`` if given."""
    out = []
    yaw = 0.0
    for i, p in enumerate(points):
        if i + 1 < len(points) and list(points[i + 1]) != list(p):
            yaw = yaw_towards(p, points[i + 1])
        elif i + 1 == len(points) and final_yaw is not None:
            yaw = final_yaw
        out.append(([float(v) for v in p], quat_from_yaw(yaw)))
    return out
