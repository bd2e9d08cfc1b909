"""Health report for /diagnostics (diagnostic_msgs/DiagnosticArray): one status for the model, one per camera.

The report is built as plain data first so it can be tested and logged without ROS message types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ivl_ros.node.frames import CameraStats

OK, WARN, ERROR = 0, 1, 2
STALE_AFTER_S = 5.0  # a camera silent for longer is reported as WARN


@dataclass
class Status:
    level: int
    name: str
    message: str
    hardware_id: str = ""
    values: dict[str, str] = field(default_factory=dict)


def model_status(node: str, state: str, error: str, info: dict[str, object]) -> Status:
    level, message = {"ready": (OK, "model loaded"), "loading": (WARN, "model loading")}.get(
        state, (ERROR, f"model failed to load: {error}")
    )
    values = {"model_loaded": str(state == "ready").lower(), "load_error": error}
    values.update({k: str(v) for k, v in info.items()})
    return Status(level, f"{node}: model", message, str(info.get("model_id", "")), values)


def camera_statuses(
    node: str, cameras: dict[str, CameraStats], now: float | None = None, extra: dict[str, dict[str, str]] | None = None
) -> list[Status]:
    """One status per camera; ``extra`` adds values per camera (e.g. its subscription's reliability)."""
    now = time.monotonic() if now is None else now
    out = []
    for camera, s in cameras.items():
        age = None if s.last_received is None else now - s.last_received
        if age is None:
            level, message = WARN, "no frame received yet"
        elif age > STALE_AFTER_S:
            level, message = WARN, f"no frame for {age:.1f} s"
        else:
            level, message = OK, "receiving frames"
        if s.last_error and s.rejected:
            message += f"; last rejected frame: {s.last_error}"
        values = {
            "received": str(s.received),
            "dropped": str(s.dropped),
            "rejected": str(s.rejected),
            "captioned": str(s.captioned),
            "last_frame_age_s": "" if age is None else f"{age:.3f}",
            "last_error": s.last_error,
            **(extra or {}).get(camera, {}),
        }
        out.append(Status(level, f"{node}: camera {camera}", message, camera, values))
    return out


def to_msg(statuses: list[Status], stamp) -> object:
    """-> diagnostic_msgs/DiagnosticArray (import deferred: the wheel is optional)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    msg = DiagnosticArray()
    msg.header.stamp = stamp
    for s in statuses:
        msg.status.append(
            DiagnosticStatus(
                level=bytes([s.level]),
                name=s.name,
                message=s.message[:1000],
                hardware_id=s.hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in s.values.items()],
            )
        )
    return msg
