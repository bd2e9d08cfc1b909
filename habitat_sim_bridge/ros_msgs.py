"""Frames and poses -> ROS 2 messages (no cv_bridge: ``data`` is always assigned ``bytes``, never an ndarray,
which rclpy would copy element by element).

Habitat's world is y-up with the agent looking along -z; ROS (REP 103) is z-up with x forward. The map frame used
here is x = -z_habitat, y = -x_habitat, z = y_habitat, so a Habitat yaw (counter-clockwise about up) is the same
number as the ROS yaw.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np

from habitat_sim_bridge.geometry import yaw_from_quat
from habitat_sim_bridge.sources.base import CameraIntrinsics


def habitat_to_ros_position(p: Sequence[float]) -> tuple[float, float, float]:
    return (-float(p[2]), -float(p[0]), float(p[1]))


def ros_yaw_quaternion(rotation: Sequence[float]) -> tuple[float, float, float, float]:
    yaw = yaw_from_quat(rotation)
    return (0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0))


def rgb_msg(rgb: np.ndarray, header):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


def depth_msg(depth: np.ndarray, header):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(depth.shape[0]), int(depth.shape[1])
    msg.encoding = "32FC1"
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = msg.width * 4
    msg.data = np.ascontiguousarray(depth, dtype=np.float32).tobytes()
    return msg


def camera_info_msg(k: CameraIntrinsics, header):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = k.width, k.height
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = k.k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def pose_fields(target, position: Sequence[float], rotation: Sequence[float]) -> None:
    """Fill a geometry_msgs/Pose in the ROS map frame."""
    target.position.x, target.position.y, target.position.z = habitat_to_ros_position(position)
    q = ros_yaw_quaternion(rotation)
    target.orientation.x, target.orientation.y, target.orientation.z, target.orientation.w = q


def odometry_msg(
    position: Sequence[float],
    rotation: Sequence[float],
    header,
    child_frame: str,
    twist: tuple[float, float] = (0.0, 0.0),
):
    """nav_msgs/Odometry when the wheel is installed, else geometry_msgs/PoseStamped."""
    try:
        from nav_msgs.msg import Odometry
    except ImportError:
        from geometry_msgs.msg import PoseStamped

        msg = PoseStamped()
        msg.header = header
        pose_fields(msg.pose, position, rotation)
        return msg
    msg = Odometry()
    msg.header = header
    msg.child_frame_id = child_frame
    pose_fields(msg.pose.pose, position, rotation)
    msg.twist.twist.linear.x, msg.twist.twist.angular.z = float(twist[0]), float(twist[1])
    return msg


def odometry_type():
    try:
        from nav_msgs.msg import Odometry

        return Odometry
    except ImportError:
        from geometry_msgs.msg import PoseStamped

        return PoseStamped
