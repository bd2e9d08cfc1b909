"""``ivl-ros-demo``: the README's main job. Starts the captioner and the Habitat bridge (CPU-rendered rooms)
as real ROS 2 processes, prints captions as they arrive on /ivl_captioner/caption, then stops everything.

If no ROS 2 runtime can start here, it says why and captions a still frame through the same model instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SAMPLE_FRAME = Path(__file__).resolve().parents[2] / "assets" / "sample_frame.png"
CAPTION_TOPIC = "/ivl_captioner/caption"


def _ros_problem() -> str | None:
    try:
        import rclpy  # noqa: F401

        from ivl_interfaces.msg import Caption  # noqa: F401
    except Exception as exc:  # ImportError, or the typesupport library failing to load
        return f"{type(exc).__name__}: {exc}"
    return None


def _still_frame_fallback(model: str | None) -> int:
    from ivl_ros.model.defaults import default_model_path, demo_notice
    from ivl_ros.model.engine import VisionLanguageEngine

    path = Path(model) if model else default_model_path()
    if demo_notice(path):
        print(demo_notice(path))
    answer = VisionLanguageEngine.load(path).caption(SAMPLE_FRAME)
    print(f"{SAMPLE_FRAME.name}: {answer.answer}  ({answer.latency_ms:.0f} ms)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ivl-ros-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--captions", type=int, default=5, help="stop after this many captions (default 5)")
    ap.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    ap.add_argument("launch_args", nargs="*", metavar="name:=value", help="passed to ivl-ros-launch captioner")
    args = ap.parse_args(argv)
    model = next((a.split(":=", 1)[1] for a in args.launch_args if a.startswith("model_path:=")), None)

    problem = _ros_problem()
    if problem:
        print(
            f"ivl-ros-demo: no ROS 2 runtime here ({problem}). Set it up with `bash scripts/setup.sh` (pip "
            "wheels + ivl_interfaces) or source a ROS 2 install. Captioning a still frame instead:"
        )
        return _still_frame_fallback(model)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from ivl_interfaces.msg import Caption

    launch = [sys.executable, "-m", "ivl_ros.node.launcher", "captioner", "use_sim:=true", *args.launch_args]
    print("+ ivl-ros-launch " + " ".join(launch[4:]), flush=True)
    launcher = subprocess.Popen(launch, start_new_session=True)
    rclpy.init()
    node = rclpy.create_node("ivl_ros_demo")
    received: list[Caption] = []

    def on_caption(msg: Caption) -> None:
        received.append(msg)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        print(f"[frame {stamp:.2f}] {msg.camera}: {msg.text}  ({msg.tiles} tiles, {msg.latency_ms:.0f} ms)", flush=True)

    node.create_subscription(
        Caption, CAPTION_TOPIC, on_caption, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    )
    deadline = time.monotonic() + args.timeout
    rc = 0
    try:
        while len(received) < args.captions:
            rclpy.spin_once(node, timeout_sec=0.2)
            if launcher.poll() is not None:
                print(
                    f"ivl-ros-demo: the launcher exited with {launcher.returncode} before {args.captions} "
                    "captions arrived",
                    file=sys.stderr,
                )
                rc = 1
                break
            if time.monotonic() > deadline:
                print(f"ivl-ros-demo: only {len(received)} caption(s) in {args.timeout:.0f} s", file=sys.stderr)
                rc = 1
                break
    except KeyboardInterrupt:
        rc = 130
    except Exception:
        if rclpy.ok():
            raise
        rc = 130  # Ctrl-C: rclpy's handler shut the context down first, so the wait in progress failed
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGINT)
            try:
                launcher.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
    if rc == 0:
        print(f"ivl-ros-demo: {len(received)} captions received over ROS 2; stopped cleanly")
    return rc


if __name__ == "__main__":
    sys.exit(main())
