"""A camera stand-in, configured as a user's camera driver is: default ROS 2 settings (the test gives it nothing but
ROS_DOMAIN_ID). Publishes deterministic rgb8 frames at a rate; frame_id = "[tag]seq=<i>", stamp = now.

Prints {"matched": n} once a subscriber has matched (it publishes nothing before that, so no frame is lost to
discovery), then publishes --count frames (0: until SIGINT). At exit prints one JSON line:
{"published": n, "stamps": {seq: [sec, nanosec]}} (stamps only with --record).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import rclpy
from common import make_frame
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

MATCH_DEADLINE_S = 120.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="/camera/image_raw")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--count", type=int, default=0, help="frames to publish (0: until SIGINT)")
    ap.add_argument("--distinct", type=int, default=8, help="distinct frame contents, cycled")
    ap.add_argument("--reliable", action="store_true", help="reliable QoS (default: sensor data, best effort)")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--tag", default="", help="frame_id prefix: <tag>seq=<i>")
    args = ap.parse_args()
    # SIGINT ends the run (the test's stop()): with rclpy's own handler the context could be shut down between two
    # publishes before KeyboardInterrupt reaches this loop, and the next publish would fail instead of ending it.
    # Python's own handler is set explicitly: a process started from a background job inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Node("test_camera")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if args.reliable else qos_profile_sensor_data
    pub = node.create_publisher(Image, args.topic, qos)
    frames = [make_frame(i, args.width, args.height).tobytes() for i in range(args.distinct)]
    stamps = {}
    seq = 0
    try:
        end = time.monotonic() + MATCH_DEADLINE_S
        while pub.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        print(json.dumps({"matched": pub.get_subscription_count()}), flush=True)
        period = 1.0 / args.rate
        start = time.monotonic()
        while args.count == 0 or seq < args.count:
            msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
            msg.data = frames[seq % len(frames)]
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = f"{args.tag}seq={seq}"
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
