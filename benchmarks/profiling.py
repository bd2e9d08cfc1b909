"""GPU kernel listings from torch.profiler: time by kernel class and the top kernels (shared by the benchmarks).

The class of a kernel comes from its name alone (cuBLAS/cuDNN/Inductor/ATen naming), first match wins:
attention names before matmul (cuDNN's flash kernels also say ``wgmma``), Inductor's fused pointwise and
reduction kernels before copy (their names list the fused ops, ``_to_copy`` among them), copy before the
generic elementwise words (ATen's copy is an ``unrolled_elementwise_kernel<direct_copy_kernel_cuda>``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

KERNEL_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
    (
        "matmul",
        ("triton_tem_", "gemm", "gemv", "xmma", "nvjet", "cutlass", "matmul", "wgmma", "splitk", "matvec"),
    ),
    ("elementwise/norm", ("triton_poi_", "triton_red_", "triton_per_")),
    ("copy", ("memcpy", "memset", "copy", "cast")),
    (
        "elementwise/norm",
        (
            "elementwise",
            "reduce",
            "vectorized",
            "unrolled",
            "softmax",
            "norm",
            "cat",
            "index",
            "scatter",
            "gather",
            "dropout",
            "bernoulli",
        ),
    ),
)
CLASS_LABELS = ("matmul", "attention", "elementwise/norm", "copy", "other")


def kernel_class(name: str) -> str:
    """One of CLASS_LABELS for a CUDA kernel name."""
    low = name.lower()
    for label, keys in KERNEL_CLASSES:
        if any(k in low for k in keys):
            return label
    return "other"


def _device_us(evt) -> float:
    """Self device time of a key_averages() row in microseconds, across torch versions' attribute names."""
    return float(getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0) or 0)


def kernel_listing(prof, top: int = 10) -> dict:
    """GPU time of a finished torch.profiler run: total ms, ms by class, the ``top`` kernels (ms, calls, name)."""
    by_class = dict.fromkeys(CLASS_LABELS, 0.0)
    kernels = []
    for evt in prof.key_averages():
        us = _device_us(evt)
        if us <= 0 or getattr(evt, "device_type", None) is not None and "CUDA" not in str(evt.device_type):
            continue
        by_class[kernel_class(evt.key)] += us / 1e3
        kernels.append((us / 1e3, int(evt.count), evt.key))
    kernels.sort(key=lambda k: -k[0])
    return {
        "gpu_ms": sum(by_class.values()),
        "gpu_ms_by_class": {k: round(v, 4) for k, v in by_class.items()},
        "top_kernels": [
            {"ms": round(ms, 4), "calls": calls, "class": kernel_class(name), "name": name[:160]}
            for ms, calls, name in kernels[:top]
        ],
    }


def profile_cuda(run: Callable[[], object], top: int = 10) -> dict:
    """``run()`` once under torch.profiler (CPU + CUDA activity): :func:`kernel_listing` plus its wall ms (host
    to device-idle, synchronised before and after) and the GPU-idle share of that wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - started) * 1e3
    listing = kernel_listing(prof, top)
    listing["profiled_wall_ms"] = wall_ms
    listing["gpu_idle_share"] = max(0.0, 1.0 - listing["gpu_ms"] / wall_ms) if wall_ms > 0 else 0.0
    return listing
