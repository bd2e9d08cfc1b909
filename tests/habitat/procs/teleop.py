"""Teleop process for the bridge tests: send discrete actions and a cmd_vel, report the odometry seen after each.

usage: teleop.py OUT.json TIMEOUT_S
"""

from __future__ import annotations

import json
import math
import sys
import time

import rclpy
from geometry_msgs.msg import Twist
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from habitat_sim_bridge.ros_msgs import odometry_type


def main() -> int:
    out, timeout = sys.argv[1], float(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node("bridge_test_teleop")
    poses: list = []

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
    report: dict = {}

    def settle(n: int = 3) -> list:
        start = len(poses)
        while len(poses) < start + n and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        return poses[-1] if poses else None

    while (not poses or act.get_subscription_count() == 0) and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    act.publish(String(data="turn_left"))  # switches the bridge to manual control
    report["after_turn"] = settle()
    act.publish(String(data="turn_left"))
    report["after_turn2"] = settle()
    act.publish(String(data="move_forward"))
    report["after_forward"] = settle()
    twist = Twist()
    twist.angular.z = 1.0
    vel.publish(twist)
    report["after_twist"] = settle(6)
    with open(out, "w") as fh:
        json.dump(report, fh)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
