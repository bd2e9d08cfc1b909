"""Timing helpers: warm-up, repetitions, median and p90; device work is synchronised before reading clocks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Stats:
    median: float
    p90: float
    n: int
    values: list[float]

    def to_json(self) -> dict:
        return {"median": self.median, "p90": self.p90, "n": self.n, "values": self.values}


def stats(values: list[float]) -> Stats:
    arr = np.asarray(values, dtype=np.float64)
    return Stats(float(np.median(arr)), float(np.percentile(arr, 90)), len(values), [float(v) for v in values])


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def wall_ms(fn: Callable[[], object], warmup: int, reps: int) -> tuple[Stats, object]:
    """Host wall time of ``fn`` (including its host work), the device synchronised around each call."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync()
    values = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        sync()
        values.append((time.perf_counter() - start) * 1000.0)
    return stats(values), result


def device_ms(fn: Callable[[], object], warmup: int, reps: int) -> Stats:
    """Device time of ``fn`` with CUDA events (host wall time on CPU)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return wall_ms(fn, warmup, reps)[0]
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    values = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        values.append(start.elapsed_time(end))
    return stats(values)
