"""Latest-frame slots, one per camera: a new frame replaces the old one, so nothing ever queues.

A slow model therefore always sees the newest frame; a frame replaced before it was captioned is
counted as dropped (that is the intended behaviour, not a fault).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    camera: str
    rgb: np.ndarray  # HxWx3 uint8 RGB
    header: Any  # std_msgs/Header of the source message (stamp + frame_id)
    seq: int  # per-camera arrival number
    received: float = field(default_factory=time.monotonic)


@dataclass
class CameraStats:
    received: int = 0
    rejected: int = 0  # malformed frames (never stored)
    dropped: int = 0  # replaced before being captioned
    captioned: int = 0
    last_received: float | None = None
    last_error: str = ""


class LatestFrames:
    """Thread-safe store: subscription callbacks put, the inference worker and request handlers read."""

    def __init__(self, cameras: list[str]) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, Frame | None] = {cam: None for cam in cameras}
        self._consumed: dict[str, int] = {cam: 0 for cam in cameras}
        self._stats = {cam: CameraStats() for cam in cameras}

    @property
    def cameras(self) -> list[str]:
        return list(self._frames)

    def put(self, camera: str, rgb: np.ndarray, header: Any) -> Frame:
        with self._lock:
            stats = self._stats[camera]
            previous = self._frames[camera]
            if previous is not None and previous.seq > self._consumed[camera]:
                stats.dropped += 1
            stats.received += 1
            stats.last_received = time.monotonic()
            frame = Frame(camera, rgb, header, stats.received)
            self._frames[camera] = frame
            return frame

    def reject(self, camera: str, reason: str) -> None:
        with self._lock:
            self._stats[camera].rejected += 1
            self._stats[camera].last_error = reason

    def latest(self, camera: str) -> Frame | None:
        """The newest frame of ``camera`` (does not mark it captioned)."""
        with self._lock:
            return self._frames[camera]

    def has_new(self) -> bool:
        with self._lock:
            return any(f is not None and f.seq > self._consumed[c] for c, f in self._frames.items())

    def take_new(self) -> list[Frame]:
        """The newest frame of every camera that got one since the last call, marked as captioned."""
        with self._lock:
            taken = [f for c, f in self._frames.items() if f is not None and f.seq > self._consumed[c]]
            for frame in taken:
                self._consumed[frame.camera] = frame.seq
                self._stats[frame.camera].captioned += 1
            return taken

    def stats(self) -> dict[str, CameraStats]:
        with self._lock:
            return {cam: CameraStats(**vars(s)) for cam, s in self._stats.items()}
