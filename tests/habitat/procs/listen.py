"""Subscriber process for the bridge tests: record header/encoding of every message, write JSON, exit.

usage: listen.py OUT.json EXPECTED_IMAGES TIMEOUT_S
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from habitat_sim_bridge.ros_msgs import odometry_type


def main() -> int:
    out, expected, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node("bridge_test_listener")
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    got: dict[str, list] = {"rgb": [], "depth": [], "info": [], "odom": []}

    def stamp(h) -> int:
        return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec

    def on_image(key):
        def cb(msg):
            item = {
                "stamp": stamp(msg.header),
                "frame_id": msg.header.frame_id,
                "encoding": msg.encoding,
                "w": msg.width,
                "h": msg.height,
                "step": msg.step,
                "bytes": len(msg.data),
            }
            if msg.encoding == "rgb8":
                arr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
                item["mean"] = float(arr.mean())
            elif msg.encoding == "32FC1":
                arr = np.frombuffer(msg.data, np.float32).reshape(msg.height, msg.width)
                item["depth_max"] = float(arr.max())
            got[key].append(item)

        return cb

    node.create_subscription(Image, "/camera/image_raw", on_image("rgb"), qos)
    node.create_subscription(Image, "/camera/depth/image_raw", on_image("depth"), qos)
    node.create_subscription(
        CameraInfo,
        "/camera/camera_info",
        lambda m: got["info"].append(
            {"stamp": stamp(m.header), "frame_id": m.header.frame_id, "k": list(m.k), "w": m.width, "h": m.height}
        ),
        qos,
    )
    odom_t = odometry_type()

    def on_odom(m):
        pose = m.pose.pose if hasattr(m, "child_frame_id") else m.pose
        got["odom"].append(
            {
                "stamp": stamp(m.header),
                "frame_id": m.header.frame_id,
                "child": getattr(m, "child_frame_id", ""),
                "type": type(m).__name__,
                "xyz": [pose.position.x, pose.position.y, pose.position.z],
            }
        )

    node.create_subscription(odom_t, "/odom", on_odom, qos)
    end = time.monotonic() + timeout
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
        n = len(got["rgb"])
        if n != last_count:
            last_count, quiet_since = n, time.monotonic()
        # stop once the expected images arrived and the other topics had a moment to catch up
        if n >= expected and time.monotonic() - quiet_since > 0.7:
            break
    with open(out, "w") as fh:
        json.dump(got, fh)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
