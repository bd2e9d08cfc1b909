"""Teleop process for the bridge tests: send discrete actions and a cmd_vel, report the odometry each one causes.

usage: teleop.py OUT.json TIMEOUT_S SEED      (SEED: the bridge's ``seed`` parameter, procedural source)

Every step waits for its effect on /odom (an event), with TIMEOUT_S as the deadline for the whole run; a step
whose effect never came is reported as null.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import rclpy
from geometry_msgs.msg import Twist
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from habitat_sim_bridge.ros_msgs import odometry_type
from habitat_sim_bridge.scenegen import generate_scene

TURN = math.radians(10.0)  # the bridge's turn_left / turn_right step
STEP = 0.25  # its move_forward step, metres


def angle(a: float, b: float) -> float:
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def main() -> int:
    out, timeout, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    # The procedural source builds its room from the first draws of default_rng(seed): the same navigability map.
    grid = generate_scene(f"procedural_{seed}", np.random.default_rng(seed)).navgrid
    rclpy.init()
    node = rclpy.create_node("bridge_test_teleop")
    poses: list = []  # [x, y, yaw] in the ROS map frame

    def on_odom(m):
        pose = m.pose.pose if hasattr(m, "child_frame_id") else m.pose
        yaw = 2 * math.atan2(pose.orientation.z, pose.orientation.w)
        poses.append([pose.position.x, pose.position.y, yaw])

    node.create_subscription(
        odometry_type(), "/odom", on_odom, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    )
    act = node.create_publisher(String, "/habitat/action", 10)
    vel = node.create_publisher(Twist, "/cmd_vel", 10)
    end = time.monotonic() + timeout

    def wait_for(done) -> list | None:
        """Spin until ``done(poses)`` holds; the newest pose then, or None at the deadline."""
        while time.monotonic() < end:
            if poses and done(poses):
                return list(poses[-1])
            rclpy.spin_once(node, timeout_sec=0.05)
        return None

    def turn_left(base: list) -> list | None:
        act.publish(String(data="turn_left"))
        return wait_for(lambda p: abs(angle(p[-1][2], base[2])) > TURN / 2)

    report: dict = {}
    free: list[int] = []
    wait_for(lambda p: act.get_subscription_count() > 0)
    # The first action switches the bridge from its path to manual control: from then on the pose only
    # changes when we act, so three identical poses in a row say the switch happened.
    act.publish(String(data="turn_left"))
    report["after_turn"] = base = wait_for(lambda p: len(p) >= 3 and p[-1] == p[-2] == p[-3])
    if base is not None:
        report["after_turn2"] = base = turn_left(base)
    if base is not None:
        # Face a direction whose forward step is navigable, so move_forward must move (never blocked).
        x, z = -base[1], -base[0]  # ROS map (x, y) -> Habitat (x, z)
        free = [
            k
            for k in range(36)
            if grid.is_free([x - STEP * math.sin(base[2] + k * TURN), 0.0, z - STEP * math.cos(base[2] + k * TURN)])
        ]
        report["turns_to_free_heading"] = free[0] if free else None
        for _ in range(free[0] if free else 0):
            base = turn_left(base) if base is not None else None
        report["before_forward"] = base
    if base is not None and free:
        act.publish(String(data="move_forward"))
        report["after_forward"] = base = wait_for(lambda p: math.dist(p[-1][:2], base[:2]) > 1e-6)
    if base is not None:
        twist = Twist()
        twist.angular.z = 1.0
        vel.publish(twist)
        report["after_twist"] = wait_for(lambda p: abs(angle(p[-1][2], base[2])) > 0.2)
    with open(out, "w") as fh:
        json.dump(report, fh)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
