"""Frame delivery to the captioner from camera publishers as users configure them.

For each publisher transport {default Fast DDS settings (what every camera driver has), the project's image
publisher profile (config/fastdds_image_publisher.xml)} x QoS {best effort (sensor data), reliable} x size {640x480,
1280x720}: a 30 Hz rgb8 stream of --frames frames. Counted: frames the node received (its /diagnostics counter) and,
for comparison, frames a plain default-configured rclpy subscriber in another process received.

The node runs as users start it (`ivl-ros-launch captioner`, so it picks its own transport) with the tiny model
captioning at 1 Hz; this observer and the comparison subscriber have default ROS 2 settings; own ROS domain.

    .venv/bin/python benchmarks/node_delivery.py [--frames 300] [--rate 30] [--discovery-range LOCALHOST]

Writes benchmarks/results/node_delivery.{json,md} (or node_delivery_<range>.* with --discovery-range).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}
NOT_DEFAULT = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "IVL_ROS_DDS_PROFILE",
    "RMW_FASTRTPS_USE_QOS_FROM_XML",
)
TOPIC = "/camera/image_raw"


def default_env(domain: int, discovery_range: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_DEFAULT}
    env.update(ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if discovery_range:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery_range
    return env


def run_publisher(args: argparse.Namespace) -> None:
    """--publish mode: wait for both subscribers, then stream; print {"published": n}."""
    import numpy as np
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = Node("delivery_camera")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if args.reliable else qos_profile_sensor_data
    pub = node.create_publisher(Image, TOPIC, qos)
    width, height = SIZES[args.size]
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    end = time.monotonic() + 120
    while pub.get_subscription_count() < 2 and time.monotonic() < end:
        time.sleep(0.05)
    print(json.dumps({"matched": pub.get_subscription_count()}), flush=True)
    sys.stdin.readline()  # the observer says go once the node has settled on this publisher
    start = time.monotonic()
    for seq in range(args.frames):
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.data = frame  # bytes, never an ndarray (element-wise copy)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = f"seq={seq}"
        pub.publish(msg)
        time.sleep(max(0.0, start + (seq + 1) / args.rate - time.monotonic()))
    print(json.dumps({"published": args.frames, "seconds": time.monotonic() - start}), flush=True)
    time.sleep(2.0)  # let reliable readers finish their repairs before the writer goes away
    node.destroy_node()
    rclpy.try_shutdown()


def run_listener(args: argparse.Namespace) -> None:
    """--listen mode: a plain default subscriber of the publisher's kind; counts until stdin closes."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("delivery_listener")
    count = [0]
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if args.reliable else qos_profile_sensor_data
    node.create_subscription(Image, TOPIC, lambda _m: count.__setitem__(0, count[0] + 1), qos)
    import select

    while True:
        rclpy.spin_once(node, timeout_sec=0.05)
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
            break
    print(json.dumps({"received": count[0]}), flush=True)


class Observer:
    """This process: reads the node's /diagnostics (default ROS 2 settings)."""

    def __init__(self) -> None:
        import threading

        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray

        rclpy.init()
        self.node = rclpy.create_node("delivery_observer")
        self.lock = threading.Lock()
        self.reports = 0
        self.camera: dict[str, str] = {}
        self.model_loaded = False
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self._spin = threading.Thread(target=rclpy.spin, args=(self.node,), daemon=True)
        self._spin.start()

    def _on_diag(self, msg) -> None:
        with self.lock:
            self.reports += 1
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name.endswith(f"camera {TOPIC}"):
                    self.camera = values
                elif status.name.endswith(": model"):
                    self.model_loaded = values.get("model_loaded") == "true"

    def wait(self, predicate, timeout: float = 180.0) -> dict[str, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if predicate(self):
                    return dict(self.camera)
            time.sleep(0.05)
        raise TimeoutError(f"diagnostics never met the condition: {self.camera}")

    def next_report(self) -> dict[str, str]:
        with self.lock:
            seq = self.reports
        return self.wait(lambda o: o.reports > seq + 1)  # a report made wholly after this call


def measure(
    observer: Observer,
    env: dict[str, str],
    pub_env: dict[str, str],
    size: str,
    reliable: bool,
    frames: int,
    rate: float,
) -> dict:
    flags = ["--size", size, "--frames", str(frames), "--rate", str(rate)] + (["--reliable"] if reliable else [])
    me = [sys.executable, str(Path(__file__).resolve())]
    listener = subprocess.Popen(
        [*me, "--listen", *flags], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    publisher = subprocess.Popen(
        [*me, "--publish", *flags], env=pub_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    matched = json.loads(publisher.stdout.readline())["matched"]
    want = "reliable" if reliable else "best_effort"
    # Settled: the node knows this publisher and its subscription follows it (re-matched once a second).
    observer.wait(lambda o: o.camera.get("reliability") == want and int(o.camera.get("publishers", 0)) >= 1)
    before = observer.next_report()
    publisher.stdin.write("go\n")
    publisher.stdin.flush()
    sent = json.loads(publisher.stdout.readline())
    publisher.wait(timeout=60)
    after = observer.next_report()
    listener.stdin.close()
    plain = json.loads(listener.stdout.readline())["received"]
    listener.wait(timeout=30)
    received = int(after["received"]) - int(before["received"])
    return {
        "size": size,
        "qos": want,
        "published": sent["published"],
        "seconds": round(sent["seconds"], 2),
        "node_received": received,
        "node_ratio": round(received / sent["published"], 4),
        "plain_subscriber_received": plain,
        "plain_ratio": round(plain / sent["published"], 4),
        "matched": matched,
        "node_reliability": after.get("reliability"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--model", help="checkpoint for the node (default: a tiny random one made here)")
    ap.add_argument(
        "--discovery-range",
        choices=["LOCALHOST", "SUBNET"],
        help="ROS_AUTOMATIC_DISCOVERY_RANGE for every process (default: unset, i.e. Fast DDS's default)",
    )
    ap.add_argument("--domain", type=int, default=57)
    ap.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--listen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", default="640x480", help=argparse.SUPPRESS)
    ap.add_argument("--reliable", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publish:
        run_publisher(args)
        return 0
    if args.listen:
        run_listener(args)
        return 0

    os.environ.update(default_env(args.domain, args.discovery_range))
    for name in NOT_DEFAULT:
        if name != "ROS_AUTOMATIC_DISCOVERY_RANGE" or not args.discovery_range:
            os.environ.pop(name, None)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "tiny")
            subprocess.run(
                [sys.executable, "-m", "ivl_ros.cli", "make-tiny", model],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ivl_ros.node.launcher",
                "captioner",
                f"model_path:={model}",
                "caption_rate_hz:=1.0",
                "max_tiles:=1",
            ],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        observer = Observer()
        rows = []
        try:
            observer.wait(lambda o: o.model_loaded)
            from ivl_ros.transport import PUBLISHER, image_transport_env

            transports = {"default": env, "ivl publisher profile": {**env, **image_transport_env(env, PUBLISHER)}}
            for name, pub_env in transports.items():
                for reliable in (False, True):
                    for size in SIZES:
                        row = {
                            "publisher_transport": name,
                            **measure(observer, env, pub_env, size, reliable, args.frames, args.rate),
                        }
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        finally:
            os.killpg(launcher.pid, signal.SIGINT)
            node_log, _ = launcher.communicate(timeout=60)
    suffix = f"_{args.discovery_range.lower()}" if args.discovery_range else ""
    write(rows, args, node_log, suffix)
    return 0


def write(rows: list[dict], args: argparse.Namespace, node_log: str, suffix: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/node_delivery.py" + (
        f" --discovery-range {args.discovery_range}" if args.discovery_range else ""
    )
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "frames": args.frames,
        "rate_hz": args.rate,
        "rmem_max": Path("/proc/sys/net/core/rmem_max").read_text().strip(),
        "discovery_range": args.discovery_range or "default",
        "node_transport": [line for line in node_log.splitlines() if "Fast DDS" in line],
    }
    (RESULTS / f"node_delivery{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Frame delivery to the captioner ({meta['discovery_range']} discovery range)",
        "",
        f"Command: `{command}` ({meta['date']}, {meta['machine']}, net.core.rmem_max {meta['rmem_max']}). "
        f"{args.frames} rgb8 frames at {args.rate:g} Hz per row; the node started by `ivl-ros-launch captioner` "
        "(tiny model captioning at 1 Hz), which picks its own transport; the comparison subscriber and this "
        "observer have default ROS 2 settings. Node counts from its /diagnostics.",
        "",
        "| publisher transport | QoS | size | node received / sent | plain default subscriber received / sent |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['publisher_transport']} | {r['qos']} | {r['size']} | {r['node_received']}/{r['published']}"
            f" ({100 * r['node_ratio']:.1f}%) | {r['plain_subscriber_received']}/{r['published']} "
            f"({100 * r['plain_ratio']:.1f}%) |"
        )
    (RESULTS / f"node_delivery{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
