"""Camera subscriptions whose reliability follows what the publishers on each topic offer, as rosbag2 does.

Why: a best-effort reader matches every publisher, but a reliable publisher then sends it best-effort too (no
repairs), so any lost fragment of a large frame loses the whole frame; a reliable reader repairs them but cannot match
a best-effort publisher at all. So per topic, in ``auto`` mode:

* no publisher yet: best effort (it matches whichever kind comes);
* every publisher offers reliable: reliable;
* any publisher offers best effort: best effort (a reliable reader would cut that publisher off).

The choice is re-checked once a second against the ROS graph (the publisher count goes to /diagnostics); a change
re-creates the subscription (the latest-frame slot and its counters are kept). ``best_effort`` / ``reliable`` fix
the choice for all topics (``image_reliability``), and ``qos_overrides.<topic>.subscription.reliability``
(auto | best_effort | reliable) for one topic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSHistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions

AUTO, BEST_EFFORT, RELIABLE = "auto", "best_effort", "reliable"
RELIABILITY_MODES = (AUTO, BEST_EFFORT, RELIABLE)
REFRESH_PERIOD_S = 1.0
_POLICY = {BEST_EFFORT: ReliabilityPolicy.BEST_EFFORT, RELIABLE: ReliabilityPolicy.RELIABLE}


def matching_reliability(offered: Iterable[ReliabilityPolicy], current: str) -> str:
    """The reader reliability that loses the fewest frames from publishers offering ``offered``."""
    offered = list(offered)
    if not offered:
        return current
    return RELIABLE if all(o == ReliabilityPolicy.RELIABLE for o in offered) else BEST_EFFORT


def reliability_parameter(topic: str) -> str:
    """The per-topic override, named like rclpy's QoS override parameters."""
    return f"qos_overrides.{topic}.subscription.reliability"


@dataclass
class _Camera:
    camera: str  # the image_topics entry (Caption.camera)
    topic: str  # what is subscribed (…/compressed for CompressedImage)
    mode: str  # auto | best_effort | reliable
    reliability: str  # what the current subscription uses
    group: MutuallyExclusiveCallbackGroup
    subscription: Any = None
    publishers: int = 0


class CameraSubscriptions:
    """One subscription per camera; ``callback(camera, msg)`` gets every frame."""

    def __init__(
        self,
        node: Node,
        cameras: list[str],
        msg_type: Any,
        topic_of: Callable[[str], str],
        default_mode: str,
        callback: Callable[[str, Any], None],
    ) -> None:
        self._node = node
        self._msg_type = msg_type
        self._callback = callback
        self._cams: list[_Camera] = []
        for camera in cameras:
            topic = topic_of(camera)
            mode = self._declare_mode(topic, default_mode)
            # One exclusive group per camera: its frames are handled in order (an older frame can never overwrite
            # a newer one), while different cameras proceed in parallel.
            cam = _Camera(camera, topic, mode, BEST_EFFORT if mode == AUTO else mode, MutuallyExclusiveCallbackGroup())
            self._subscribe(cam)
            self._cams.append(cam)
        # Also for fixed modes: the publisher counts go to /diagnostics.
        node.create_timer(REFRESH_PERIOD_S, self.refresh, callback_group=MutuallyExclusiveCallbackGroup())

    def _declare_mode(self, topic: str, default_mode: str) -> str:
        name = reliability_parameter(topic)
        descriptor = ParameterDescriptor(
            description=f"reliability of the subscription to {topic}: {' | '.join(RELIABILITY_MODES)}", read_only=True
        )
        mode = str(self._node.declare_parameter(name, default_mode, descriptor).value).lower()
        if mode not in RELIABILITY_MODES:
            self._node.get_logger().error(
                f"parameter {name}={mode!r} must be one of {RELIABILITY_MODES}; using {default_mode!r}"
            )
            mode = default_mode
        return mode

    def _subscribe(self, cam: _Camera) -> None:
        qos = QoSProfile(
            history=QoSHistoryPolicy.KEEP_LAST,
            depth=qos_profile_sensor_data.depth,
            reliability=_POLICY[cam.reliability],
            durability=qos_profile_sensor_data.durability,
        )
        # History and depth stay overridable the standard way (qos_overrides.<topic>.subscription.depth).
        overriding = QoSOverridingOptions(policy_kinds=(QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH))
        cam.subscription = self._node.create_subscription(
            self._msg_type,
            cam.topic,
            lambda msg, camera=cam.camera: self._callback(camera, msg),
            qos,
            callback_group=cam.group,
            qos_overriding_options=overriding,
        )

    def refresh(self) -> None:
        """Match each ``auto`` camera's reliability to its current publishers (timer callback)."""
        for cam in self._cams:
            infos = self._node.get_publishers_info_by_topic(cam.topic)
            cam.publishers = len(infos)
            if cam.mode != AUTO:
                continue
            wanted = matching_reliability((info.qos_profile.reliability for info in infos), cam.reliability)
            if wanted == cam.reliability:
                continue
            self._node.get_logger().info(
                f"{cam.topic}: {len(infos)} publisher(s) offering "
                f"{sorted({info.qos_profile.reliability.name.lower() for info in infos})}; subscribing {wanted} "
                f"(was {cam.reliability})"
            )
            self._node.destroy_subscription(cam.subscription)
            cam.reliability = wanted
            self._subscribe(cam)

    def describe(self) -> dict[str, dict[str, str]]:
        """camera -> values for /diagnostics."""
        return {
            cam.camera: {
                "topic": cam.topic,
                "reliability": cam.reliability,
                "reliability_mode": cam.mode,
                "publishers": str(cam.publishers),
            }
            for cam in self._cams
        }
