"""ROS 2 node ``habitat_bridge``: steps episodes through a frame source and publishes camera topics + odometry.

    python -m habitat_sim_bridge.node --ros-args -p source:=trajectory \\
        -p trajectory:=tests/data/habitat/habitat-sim_trajectory_data.json \\
        -p images:="['tests/data/habitat/van-gogh-room.color.png']" -p rate:=10.0

Publishes (reliable, depth 5; best-effort subscribers such as the captioner also match):
``/camera/image_raw`` (rgb8), ``/camera/depth/image_raw`` (32FC1, when the source has depth),
``/camera/camera_info``, ``/odom`` (nav_msgs/Odometry, or geometry_msgs/PoseStamped without the nav_msgs wheel).
Accepts ``/habitat/action`` (std_msgs/String: move_forward, turn_left, turn_right, stop) and ``/cmd_vel``
(geometry_msgs/Twist) where the source can render arbitrary poses.
"""

from __future__ import annotations

import sys
import tempfile
import time

from geometry_msgs.msg import Twist
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from habitat_sim_bridge import ros_msgs
from habitat_sim_bridge.driver import Driver
from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.pipeline import SourceOptions, build_source
from habitat_sim_bridge.sources.replay import ReplaySource
from ivl_ros.transport import PUBLISHER, configure_process

NODE_NAME = "habitat_bridge"

# ROS parameters and their defaults (``--ros-args -p name:=value``).
PARAMETERS = {
    "source": "procedural",
    "scene": "",
    "episodes": "",
    "episodes_gt": "",
    "scenes_dir": "",
    "replay_dir": "",
    "trajectory": "",
    "images": [""],  # a string array needs a non-empty default; empty entries are dropped
    "rate": 5.0,
    "loop": True,
    "seed": 0,
    "width": 320,
    "height": 240,
    "hfov": 90.0,
    "max_frames": 0,
    "wait_for_subscribers": 0,
    "wait_timeout": 30.0,
    "exit_when_done": False,
    "image_topic": "/camera/image_raw",
    "depth_topic": "/camera/depth/image_raw",
    "camera_info_topic": "/camera/camera_info",
    "odom_topic": "/odom",
    "action_topic": "/habitat/action",
    "cmd_vel_topic": "/cmd_vel",
    "world_frame": "map",
    "base_frame": "base_link",
    "camera_frame": "camera_optical_frame",
}


class BridgeNode(Node):
    """Steps the driver at ``rate`` Hz, renders each pose and publishes the frame on every camera topic."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = {name: self.declare_parameter(name, default).value for name, default in PARAMETERS.items()}
        p["images"] = [s for s in p["images"] if s]
        self._tmp = tempfile.TemporaryDirectory(prefix="habitat_bridge_") if p["source"] == "procedural" else None
        opts = SourceOptions(
            source=p["source"],
            scene=p["scene"],
            episodes=p["episodes"],
            episodes_gt=p["episodes_gt"],
            scenes_dir=p["scenes_dir"],
            replay_dir=p["replay_dir"],
            trajectory=p["trajectory"],
            images=list(p["images"]),
            width=p["width"],
            height=p["height"],
            hfov=p["hfov"],
            seed=p["seed"],
            workdir=self._tmp.name if self._tmp else "",
        )
        self.source, paths = build_source(opts)
        self.driver = Driver(
            paths, loop=p["loop"], can_move=self.source.can_move, is_navigable=self.source.is_navigable
        )
        self.p = p
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_rgb = self.create_publisher(Image, p["image_topic"], qos)
        self.pub_depth = self.create_publisher(Image, p["depth_topic"], qos)
        self.pub_info = self.create_publisher(CameraInfo, p["camera_info_topic"], qos)
        self.pub_odom = self.create_publisher(ros_msgs.odometry_type(), p["odom_topic"], qos)
        self.create_subscription(String, p["action_topic"], self._on_action, 10)
        self.create_subscription(Twist, p["cmd_vel_topic"], self._on_twist, 10)
        self.has_depth = not isinstance(self.source, ReplaySource) or self.source.poses[0].depth is not None
        self.published = 0
        self.done = False
        self._last_stamp_ns = 0
        self._last_tick = None
        self._wait_started = time.monotonic()
        self.timer = self.create_timer(1.0 / max(p["rate"], 1e-3), self._tick)
        self.get_logger().info(f"{p['source']} source, {len(paths)} episode(s), {p['rate']} Hz -> {p['image_topic']}")

    def _on_action(self, msg: String) -> None:
        if not self.driver.act(msg.data.strip()):
            self.get_logger().warning(
                f"action {msg.data!r} ignored (source {self.p['source']} cannot move "
                f"or the action is not one of move_forward/turn_left/turn_right/stop)"
            )

    def _on_twist(self, msg: Twist) -> None:
        self.driver.set_twist(msg.linear.x, msg.angular.z)

    def _stamp(self) -> int:
        """Strictly increasing stamps even if the clock stalls or steps back."""
        now = self.get_clock().now().nanoseconds
        now = max(now, self._last_stamp_ns + 1)
        self._last_stamp_ns = now
        return now

    def _tick(self) -> None:
        if self.done:
            return
        want = self.p["wait_for_subscribers"]
        pubs = [self.pub_rgb, self.pub_info, self.pub_odom]  # every topic, or its first sample is lost
        if self.has_depth:
            pubs.append(self.pub_depth)
        if want and self.published == 0 and min(p.get_subscription_count() for p in pubs) < want:
            if time.monotonic() - self._wait_started < self.p["wait_timeout"]:
                return  # a test or recorder wants every frame: start once it is listening
        now = time.monotonic()
        dt = 0.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        pose = self.driver.next_pose(dt)
        if pose is None or (self.p["max_frames"] and self.published >= self.p["max_frames"]):
            self.done = True
            self.get_logger().info(f"done after {self.published} frames")
            return
        if isinstance(self.source, ReplaySource):
            frame = self.source.frame(pose.step)
        else:
            frame = self.source.render(pose.position, pose.rotation)
        ns = self._stamp()
        cam = Header(frame_id=self.p["camera_frame"])
        cam.stamp.sec, cam.stamp.nanosec = divmod(ns, 1_000_000_000)
        world = Header(frame_id=self.p["world_frame"], stamp=cam.stamp)
        self.pub_rgb.publish(ros_msgs.rgb_msg(frame.rgb, cam))
        if frame.depth is not None:
            self.pub_depth.publish(ros_msgs.depth_msg(frame.depth, cam))
        self.pub_info.publish(ros_msgs.camera_info_msg(frame.intrinsics, cam))
        self.pub_odom.publish(
            ros_msgs.odometry_msg(frame.position, frame.rotation, world, self.p["base_frame"], self.driver.twist)
        )
        self.published += 1
        if want and self.published == 1:
            # A reliable reader drops samples until it has matched this writer too, and then repairs only what the
            # writer's history (depth 5) still holds. Wait until every matched reader has acknowledged the first
            # sample: matched both ways, no later sample can fall out of the history undelivered.
            for pub in pubs:
                pub.wait_for_all_acked(Duration(seconds=self.p["wait_timeout"]))

    def destroy_node(self) -> None:
        # also runs from rclpy's finaliser when __init__ failed half-way (e.g. a bad scene path)
        if getattr(self, "source", None) is not None:
            self.source.close()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    # This process sends camera frames: its DDS transport must hand them whole to default-configured subscribers
    # (keeps the user's explicit choice). Must be set before the participant exists.
    transport = configure_process(PUBLISHER)
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=sys.argv if args is None else args)
    node = None
    rc = 0
    try:
        node = BridgeNode()
        node.get_logger().info(transport)
        while rclpy.ok() and not (node.done and node.p["exit_when_done"]):
            rclpy.spin_once(node, timeout_sec=0.1)
        if node.done:
            # let reliable readers fetch the last samples before the writer disappears
            end = time.monotonic() + 1.0
            while rclpy.ok() and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except BridgeError as exc:
        print(f"{NODE_NAME}: error: {exc}", file=sys.stderr)
        rc = 2
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT shut the context down in the middle of a tick (publish then fails): a normal exit
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
