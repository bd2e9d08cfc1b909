"""Frame-in -> caption-out latency of the node's own machinery under a 30 Hz 640x480 stream, without ROS.

The captioner node stores frames in :class:`ivl_ros.node.frames.LatestFrames` (one slot per camera, a new
frame replaces the old) and runs every model call on :class:`ivl_ros.node.worker.InferenceWorker`. This
drives exactly those two with a camera thread at ``rate_hz`` and the real engine, and splits each
caption's latency (frame put -> caption returned) into the wait in the slot and the model call (engine.caption,
tiling included); of the wait, the part after the previous caption ended is the node's own overhead
(wake-up, hand-off, bookkeeping). ROS transport (DDS, message conversion) is not in
it: that part needs the ROS node itself (``benchmarks/node_stream.py``).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.suite import test_frame
from benchmarks.timing import stats


def stream_latency(engine, seconds: float = 10.0, rate_hz: float = 30.0, max_tiles: int = 6) -> dict:
    from ivl_ros.node.frames import LatestFrames
    from ivl_ros.node.worker import InferenceWorker

    frames = LatestFrames(["cam"])
    records: list[dict] = []
    errors: list[str] = []
    base = test_frame()

    last_end = [0.0]

    def caption() -> None:
        taken = frames.take_new()
        for frame in taken:
            start = time.monotonic()
            engine.caption(frame.rgb, max_tiles=max_tiles)
            end = time.monotonic()
            # Scheduling delay: from when the worker could have started on this frame (it had arrived and the
            # previous caption was done) to the start; the rest of the wait is the previous caption running.
            ready = max(frame.received, last_end[0])
            records.append(
                {
                    "wait": start - frame.received,
                    "model": end - start,
                    "total": end - frame.received,
                    "sched": start - ready,
                }
            )
            last_end[0] = end

    worker = InferenceWorker(
        caption_due=lambda: 0.0 if frames.has_new() else 0.05,
        caption=caption,
        on_error=lambda what, exc: errors.append(f"{what}: {exc}"),
    )
    worker.start()
    stop = time.monotonic() + seconds
    period = 1.0 / rate_hz
    sent = 0
    next_t = time.monotonic()
    while next_t < stop:
        rgb = np.roll(base, sent, axis=1)  # a changing frame, as a camera's
        frames.put("cam", rgb, header={"stamp": next_t})
        worker.wake()
        sent += 1
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    time.sleep(0.5)
    worker.stop()
    st = frames.stats()["cam"]
    ms = {k: [1000.0 * r[k] for r in records] for k in ("wait", "model", "total", "sched")}
    overhead = ms["sched"]
    hist_edges = [0, 25, 50, 75, 100, 150, 200, 300, 500, 1000, 1e9]
    hist = np.histogram(ms["total"], bins=hist_edges)[0].tolist() if records else []
    return {
        "seconds": seconds,
        "rate_hz": rate_hz,
        "frames_sent": sent,
        "received": st.received,
        "captioned": st.captioned,
        "dropped": st.dropped,
        "errors": errors[:5],
        "total_ms": stats(ms["total"]).to_json() if records else None,
        "wait_ms": stats(ms["wait"]).to_json() if records else None,
        "model_ms": stats(ms["model"]).to_json() if records else None,
        "overhead_ms": stats(overhead).to_json() if records else None,
        "histogram_total_ms": {"edges": hist_edges[:-1], "counts": hist},
    }
