"""Per-kernel timing of the fused decode step (torch-fast on CUDA with Triton), and the tuning sweep behind it.

Each kernel type is timed as a CUDA graph of its launches over all 24 layers with their real weights (as the
decode step runs them, back to back, so the L2 cache does not serve the weights), replayed many times; the
time per launch is the graph's time over the launch count. Bytes are what the kernel must move through
device memory: its weights, plus the valid part of the KV cache for attention (activations are a few KB).
GB/s over the measured device copy rate (bytes read plus written per second) gives the share of the
ceiling. The state is a real one: a prompt of the bench's length prefilled into a batch-1 cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def _graph_ms(launch: Callable[[], None], reps: int) -> float:
    """Median ms of one replay of a graph of ``launch`` (warmed up, captured, replayed ``reps`` times x 5)."""
    from ivl_ros.model.backends.greedy import capture

    graph, _ = capture(launch, warmup=2)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    times.sort()
    return times[len(times) // 2]


def _parts(fused, st) -> list[tuple[str, int, Callable[[], None], float]]:
    """(name, launches, one graph's worth of launches, bytes per launch)."""
    layers = fused.layers
    n = len(layers)
    elem = layers[0].wqkv.element_size()
    valid = int(st.slot) + 1
    kv_bytes = 2 * fused.batch * fused.kv_heads * valid * fused.head_dim * elem

    def each(fn: Callable[[int], None]) -> Callable[[], None]:
        return lambda: [fn(i) for i in range(n)] and None

    return [
        (
            "rmsnorm + qkv + rope + cache write",
            n,
            each(lambda i: fused.qkv(i, st, gather=False)),
            layers[0].wqkv.numel() * elem,
        ),
        (
            "attention over the valid cache" + ("" if fused.attention_plan.merge_in_attention else " + merge"),
            n,
            each(lambda i: fused.attention(i, st)),
            kv_bytes,
        ),
        (
            "o + residual",
            n,
            each(lambda i: fused.residual("o", layers[i].wo, fused.attn, st, gather=False)),
            layers[0].wo.numel() * elem,
        ),
        ("rmsnorm + gate/up + silu*up", n, each(fused.gate_up), layers[0].wgu.numel() * elem),
        (
            "down + residual",
            n,
            each(lambda i: fused.residual("down", layers[i].wdown, fused.act, st, gather=False)),
            layers[0].wdown.numel() * elem,
        ),
        ("final rmsnorm + head + argmax", 1, lambda: fused.head(st), fused.lm.lm_head.weight.numel() * elem),
    ]


def kernel_table(fused, st, copy_bytes_per_s: float, reps: int = 20) -> dict:
    """Per-kernel and whole-step times of ``fused`` (a FusedDecoder) on state ``st``; the state is scratch after."""
    rows = []
    start_slot = int(st.slot)
    for name, launches, launch, nbytes in _parts(fused, st):
        st.slot.fill_(start_slot)
        ms = _graph_ms(launch, reps) / launches
        rate = nbytes / (ms / 1e3)
        rows.append(
            {
                "kernel": name,
                "launches_per_step": launches,
                "ms": ms,
                "bytes": nbytes,
                "gb_s": rate / 1e9,
                "pct_of_copy": 100.0 * rate / copy_bytes_per_s,
                "step_ms": ms * launches,
            }
        )
    st.slot.fill_(start_slot)
    whole = _graph_ms(lambda: fused.step(st), reps=8)  # each replay advances the slot by one: few replays
    parts = sum(r["step_ms"] for r in rows)
    step_bytes = sum(r["bytes"] * r["launches_per_step"] for r in rows)
    return {
        "rows": rows,
        "sum_of_parts_ms": parts,
        "step_ms": whole,
        "step_bytes": step_bytes,
        "step_gb_s": step_bytes / (whole / 1e3) / 1e9,
        "step_pct_of_copy": 100.0 * step_bytes / (whole / 1e3) / copy_bytes_per_s,
        "choose_and_gaps_ms": whole - parts,
        "configs": {k: list(v) for k, v in fused.configs.items()},
        "attention": {
            "chunk": fused.attention_plan.chunk,
            "splits": fused.attention_plan.splits,
            "programs_with_keys": fused.batch * fused.kv_heads * (start_slot // fused.attention_plan.chunk + 1),
            "warps": fused.attention_plan.warps,
            "merge_in_attention": fused.attention_plan.merge_in_attention,
            "merge_block": fused.attention_plan.merge_block,
        },
        "context": start_slot + 1,
    }


# Candidates for the sweep: (rows per program, K chunk, warps); the first is the current default.
CANDIDATES = {
    "qkv": [(2, 1024, 4), (1, 1024, 4), (2, 2048, 8)],
    "o": [(2, 1024, 4), (1, 1024, 4), (4, 1024, 8)],
    "gate_up": [(2, 1024, 4), (1, 1024, 4), (2, 2048, 8)],
    "down": [(1, 1024, 4), (2, 1024, 8), (1, 2048, 8)],
    "head": [(4, 1024, 4), (2, 1024, 4), (8, 1024, 8)],
}
# (merge in the attention kernel, cache slots per program, warps). Attention v3: short chunks, so that the
# 1837-key bench context is 232-920 programs at batch 1 (v2's best was 64 slots, 8 warps: 232 programs, 11.7 us);
# each chunk size with the in-kernel merge and with the separate one-pass merge kernel.
ATTENTION_CANDIDATES = [
    (1, 32, 4),
    (0, 32, 4),
    (1, 32, 2),
    (1, 16, 2),
    (0, 16, 2),
    (1, 16, 4),
    (1, 64, 4),
    (0, 64, 4),
    (1, 64, 8),
    (0, 128, 8),
]
PART_OF = {"qkv": 0, "o": 2, "gate_up": 3, "down": 4, "head": 5}


def tune(lm, st, make_decoder: Callable[..., object], reps: int = 20) -> dict:
    """Time every candidate config of every matrix kernel (and the attention variants); the fastest of each."""
    best: dict[str, tuple[int, int, int]] = {}
    report: dict[str, list] = {}
    start_slot = int(st.slot)
    for name, candidates in CANDIDATES.items():
        report[name] = []
        for cand in candidates:
            try:
                fused = make_decoder(configs={name: cand})
                _, launches, launch, _ = _parts(fused, st)[PART_OF[name]]
                st.slot.fill_(start_slot)
                ms = _graph_ms(launch, reps) / launches
            except Exception as exc:  # a config Triton cannot compile (registers, shared memory): skip it
                log.warning("tune %s %s failed: %s", name, cand, exc)
                torch.cuda.synchronize()
                report[name].append({"config": list(cand), "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            report[name].append({"config": list(cand), "ms": ms})
            log.info("tune %s %s: %.1f us", name, cand, ms * 1000)
        timed = [r for r in report[name] if "ms" in r]
        best[name] = tuple(min(timed, key=lambda r: r["ms"])["config"])
    report["attention"] = []
    # The reference output: the two-kernel variant (no cross-program hand-off); a variant whose output differs
    # (a race in the in-kernel merge, say) or changes between repeats is reported and never chosen.
    st.slot.fill_(start_slot)
    two_kernel = make_decoder(configs={"attention": (0, 64, 4)})
    q = torch.randn(two_kernel.q.shape, device=two_kernel.q.device).to(two_kernel.q.dtype)

    def outputs(fused) -> list[torch.Tensor]:
        fused.q.copy_(q)
        outs = []
        for _ in range(3):
            fused.attn.fill_(float("nan"))
            fused.attention(0, st)
            outs.append(fused.attn.float().clone())
        return outs

    reference = outputs(two_kernel)[0]
    for cand in ATTENTION_CANDIDATES:
        try:
            fused = make_decoder(configs={"attention": cand})
            outs = outputs(fused)
            rel = float((outs[0] - reference).norm() / reference.norm())
            stable = all(torch.equal(outs[0], o) for o in outs[1:])
            entry = {"config": list(cand), "rel_diff_to_two_kernel": rel, "repeatable": stable}
            if rel < 1e-3 and stable:
                _, launches, launch, _ = _parts(fused, st)[1]
                st.slot.fill_(start_slot)
                entry["ms"] = _graph_ms(launch, reps) / launches
        except Exception as exc:  # a config Triton cannot compile (registers, shared memory): skip it
            log.warning("tune attention %s failed: %s", cand, exc)
            torch.cuda.synchronize()
            entry = {"config": list(cand), "error": f"{type(exc).__name__}: {exc}"[:300]}
        report["attention"].append(entry)
        log.info("tune attention %s: %s", cand, entry)
    st.slot.fill_(start_slot)
    timed = [r for r in report["attention"] if "ms" in r]
    best["attention"] = tuple(min(timed, key=lambda r: r["ms"])["config"]) if timed else (0, 64, 4)
    return {"best": {k: list(v) for k, v in best.items()}, "candidates": report}
