"""Agent stepping without ROS: follow episode paths, or move by discrete actions / velocity commands.

A teleop command switches the driver from following the path to manual control (where the source can render
arbitrary poses); the next episode starts on the path again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from habitat_sim_bridge.geometry import forward_vector, quat_from_yaw, yaw_from_quat

ACTIONS = ("move_forward", "turn_left", "turn_right", "stop")


@dataclass
class Pose:
    position: list[float]
    rotation: list[float]
    episode: int = 0
    step: int = 0


class Driver:
    """Yields one pose per tick from a list of episode paths; applies actions or cmd_vel when allowed."""

    def __init__(
        self,
        paths: Sequence[Sequence[tuple[Sequence[float], Sequence[float]]]],
        loop: bool = False,
        can_move: bool = True,
        forward_step: float = 0.25,
        turn_deg: float = 10.0,
        is_navigable=None,
    ):
        self.paths = [list(p) for p in paths if p]
        self.loop = loop
        self.can_move = can_move
        self.forward_step = forward_step
        self.turn = math.radians(turn_deg)
        self.is_navigable = is_navigable or (lambda pos: True)
        self.episode, self.index = 0, -1
        self.manual = False
        self.done = not self.paths
        self.current: Pose | None = None
        self.twist = (0.0, 0.0)  # forward m/s, yaw rad/s; integrated at each tick while non-zero

    def _path_pose(self) -> Pose:
        pos, rot = self.paths[self.episode][self.index]
        return Pose([float(v) for v in pos], [float(v) for v in rot], self.episode, self.index)

    def next_pose(self, dt: float = 0.0) -> Pose | None:
        """The pose for this tick, or None when every episode has been played (and not looping)."""
        if self.done:
            return None
        if self.manual and self.current is not None:
            if self.twist != (0.0, 0.0) and dt > 0:
                self._move(self.twist[0] * dt, self.twist[1] * dt)
            self.current.step += 1
            return self.current
        self.index += 1
        if self.index >= len(self.paths[self.episode]):
            self.episode, self.index = self.episode + 1, 0
            if self.episode >= len(self.paths):
                if not self.loop:
                    self.done = True
                    return None
                self.episode = 0
        self.current = self._path_pose()
        return self.current

    def _move(self, distance: float, dyaw: float) -> bool:
        """Turn then move; a forward move into a non-navigable spot is refused (like habitat's collisions)."""
        cur = self.current
        yaw = yaw_from_quat(cur.rotation) + dyaw
        cur.rotation = quat_from_yaw(yaw)
        if distance:
            target = [float(v) for v in (cur.position + forward_vector(yaw) * distance)]
            if not self.is_navigable(target):
                return False
            cur.position = target
        return True

    def act(self, action: str) -> bool:
        """Apply a discrete action; returns False when ignored (unknown action, replay source, no pose yet)."""
        if action not in ACTIONS or not self.can_move or self.current is None or self.done:
            return False
        self.manual = True
        self.twist = (0.0, 0.0)
        if action == "stop":
            self.manual = False  # hand control back to the path: the episode continues
            return True
        if action == "move_forward":
            return self._move(self.forward_step, 0.0)
        return self._move(0.0, self.turn if action == "turn_left" else -self.turn)

    def set_twist(self, linear_x: float, angular_z: float) -> bool:
        if not self.can_move or self.current is None or self.done:
            return False
        self.manual = True
        self.twist = (float(linear_x), float(angular_z))
        return True
