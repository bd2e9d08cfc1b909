"""A camera stand-in: publishes deterministic rgb8 frames at a rate; frame_id = "seq=<i>", stamp = now.

At exit prints one JSON line: {"published": n, "stamps": {seq: [sec, nanosec]}} (stamps only with --record).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import rclpy  # noqa: E402
from common import make_frame  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="/camera/image_raw")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--distinct", type=int, default=8, help="distinct frame contents, cycled")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rclpy.init()
    node = Node("test_camera")
    pub = node.create_publisher(Image, args.topic, qos_profile_sensor_data)
    frames = [make_frame(i, args.width, args.height).tobytes() for i in range(args.distinct)]
    stamps = {}
    period = 1.0 / args.rate
    start = time.monotonic()
    seq = 0
    try:
        while time.monotonic() - start < args.duration:
            msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
            msg.data = frames[seq % len(frames)]
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = f"seq={seq}"
            pub.publish(msg)
            if args.record:
                stamps[seq] = [msg.header.stamp.sec, msg.header.stamp.nanosec]
            seq += 1
            time.sleep(max(0.0, start + seq * period - time.monotonic()))
    except KeyboardInterrupt:
        pass
    print(json.dumps({"published": seq, "stamps": stamps}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
