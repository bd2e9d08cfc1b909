"""Results files: JSON (everything), a markdown table (the headline numbers) and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

# Issue 14's targets (H200, batch 1, bf16).
TARGETS = {
    "decode_b1": ">= 900 tok/s",
    "vision_7": "<= 9 ms",
    "ttft_max6": "<= 22 ms",
    "caption": "<= 60 ms",
    "vision_1": "<= 2 ms",
    "peak": "<= 5 GB",
    "node": "<= 75 ms",
}


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def rows(results: dict) -> list[tuple[str, str, list[str]]]:
    """(metric, target, one cell per backend) for the headline table; ``results["targets"]`` (if set) replaces
    issue 14's targets, e.g. the export benchmark's goals, which are relative to torch-fast."""
    backends = results["backends"]
    targets = {**TARGETS, **results["targets"]} if "targets" in results else TARGETS
    # The measured copy rate is the ceiling (issue 14); the datasheet figure only when nothing was measured.
    ceiling = _get(results, "ceiling", "tokens_per_s_measured") or _get(results, "ceiling", "tokens_per_s_datasheet")
    batch = results["config"]["decode_batch"]

    def ms(*path) -> list[str]:
        cells = []
        for b in backends:
            med, p90 = _get(b, *path, "median"), _get(b, *path, "p90")
            cells.append("n/a" if med is None else f"{med:.1f} ({p90:.1f})")
        return cells

    def rate(key: str) -> list[str]:
        cells = []
        for b in backends:
            tps = _get(b, key, "tokens_per_s")
            share = f", {100 * tps / ceiling:.0f}% of ceiling" if tps and ceiling and key == "decode_b1" else ""
            if tps and key == "decode_b1":
                share += f" ({1000.0 / tps:.2f} ms/step)"
            cells.append(f"{_fmt(tps)}{share}")
        return cells

    out = [
        (f"vision+projector, {n} tile(s), ms median (p90)", targets.get(f"vision_{n}", ""), ms("vision_ms", str(n)))
        for n in results["config"]["tile_counts"]
    ]
    out += [
        ("time to first token, 640x480 at max 6 tiles (7), ms", targets["ttft_max6"], ms("ttft_ms", "max6")),
        ("time to first token from the frame (tiling included), 7 tiles, ms", "", ms("ttft_ms", "max6_from_frame")),
        ("time to first token, 640x480 at 1 tile, ms", "", ms("ttft_ms", "1tile")),
        ("decode, batch 1, 128 new tokens, tok/s", targets["decode_b1"], rate("decode_b1")),
        (f"decode, batch {batch}, tok/s (all rows)", "", rate(f"decode_b{batch}")),
        ("caption 640x480 end to end (min 8 / max 30 new), ms", targets["caption"], ms("caption_ms")),
        ("peak GPU memory, batch-1 work, GB", targets["peak"], [_fmt(b.get("peak_gb_batch1"), 2) for b in backends]),
        (f"peak GPU memory, incl. batch {batch}, GB", "", [_fmt(b.get("peak_gb"), 2) for b in backends]),
    ]
    return out


def speedups(results: dict) -> list[str]:
    """Each backend's ratio to hf-baseline on the headline metrics."""
    backends = {b["name"]: b for b in results["backends"]}
    base = backends.get("hf-baseline")
    if base is None:
        return []
    lines = []
    for name, b in backends.items():
        if name == "hf-baseline":
            continue
        parts = []
        for label, path, higher_better in (
            ("decode b1", ("decode_b1", "tokens_per_s"), True),
            ("vision 7 tiles", ("vision_ms", "7", "median"), False),
            ("TTFT 7 tiles", ("ttft_ms", "max6", "median"), False),
            ("caption", ("caption_ms", "median"), False),
        ):
            x, y = _get(b, *path), _get(base, *path)
            if x and y:
                parts.append(f"{label} {x / y if higher_better else y / x:.1f}x")
        lines.append(f"- {name} vs hf-baseline: " + ", ".join(parts))
    return lines


def kernel_lines(backend: dict) -> list[str]:
    """The per-kernel table of a backend's fused decode step (benchmarks/kernels.py), if it has one."""
    k = backend.get("decode_kernels")
    if not k:
        return []
    lines = [
        "",
        f"Decode step of {backend['name']}, per kernel (batch 1, {k['context']}-token context; each kernel "
        "type timed as a CUDA graph of its launches over all layers, real weights; bytes = weights, plus the "
        "valid KV cache for attention; % of the measured copy rate):",
        "",
        "| kernel | launches/step | ms per launch | GB/s | % of copy | ms per step |",
        "|---|---|---|---|---|---|",
    ]
    for r in k["rows"]:
        lines.append(
            f"| {r['kernel']} | {r['launches_per_step']} | {r['ms'] * 1000:.1f} us | {r['gb_s']:.0f} | "
            f"{r['pct_of_copy']:.0f}% | {r['step_ms']:.3f} |"
        )
    lines += [
        f"| sum of the parts | | | | | {k['sum_of_parts_ms']:.3f} |",
        f"| whole step (one graph, greedy choice and launch gaps included) | | | {k['step_gb_s']:.0f} | "
        f"{k['step_pct_of_copy']:.0f}% | {k['step_ms']:.3f} |",
        "",
        f"Kernel configs (rows per program, K chunk, warps; attention: merge in kernel, keys per iteration, "
        f"keys per program): {k['configs']}.",
    ]
    return lines


def markdown(results: dict) -> str:
    names = [b["name"] for b in results["backends"]]
    c = results.get("ceiling", {})
    lines = [
        f"# Benchmark: {results['model']} on {results['device']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Run at {results['when']}; torch {results['versions']['torch']}, transformers "
        f"{results['versions']['transformers']}; dtype {results['dtype']}. Medians with p90 in brackets; "
        f"{results['config']['warmup']} warm-up and {results['config']['reps']} timed repetitions "
        f"({results['config']['slow_reps']} for multi-second eager decodes).",
        "",
        "| metric | target | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for metric, target, cells in rows(results):
        lines.append(f"| {metric} | {target} | " + " | ".join(cells) + " |")
    lines += ["", *speedups(results), ""]
    if c:
        lines += [
            f"Bandwidth ceiling for decode: {c['decode_bytes'] / 1e9:.3f} GB read per token "
            f"({c['decode_params'] / 1e9:.3f} B LLM parameters outside the embedding table, "
            f"{c['bytes_per_param']} bytes each; the KV cache adds {c['kv_bytes_at_context'] / 1e6:.0f} MB "
            f"at the {c['context']}-token context, not counted). Datasheet bandwidth "
            f"{_fmt(c.get('datasheet_tb_s'), 2)} TB/s -> {_fmt(c.get('tokens_per_s_datasheet'), 0)} tok/s; "
            f"measured device copy {_fmt(c.get('measured_tb_s'), 2)} TB/s -> "
            f"{_fmt(c.get('tokens_per_s_measured'), 0)} tok/s.",
            "",
        ]
    identity = results.get("token_identity_vs_torch")
    if identity:
        parts = [f"{name}: " + ", ".join(f"{k} {v}" for k, v in checks.items()) for name, checks in identity.items()]
        lines += [
            "Token ids identical to the plain torch path (per row; 128 new tokens, greedy; caption text): "
            + "; ".join(parts)
            + ".",
            "",
        ]
    pre = results.get("preprocess", {})
    if pre:
        lines += [
            f"CPU tiling of the 640x480 frame (max 6 -> {pre['tiles']} tiles, {pre['prompt_tokens']} prompt "
            f"tokens): {pre['max6']['median']:.1f} ms median; it is inside the caption numbers, not inside "
            "time to first token.",
            "",
        ]
    for b in results["backends"]:
        extra = [f"{k}: {v}" for k, v in b.get("errors", {}).items()]
        if b.get("decode_mode"):
            extra.insert(0, f"decode ran as {b['decode_mode']}")
        if b.get("prefill_mode"):
            extra.insert(0, f"first-token graph's prefill ran {b['prefill_mode']}")
        if b.get("vit_mode"):
            extra.insert(0, f"ViT ran as {b['vit_mode']}+graph")
        if b.get("note"):
            extra.insert(0, b["note"])
        lines.append(f"- **{b['name']}**: " + "; ".join(extra))
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- **{name}**: skipped: {why}")
    node = results.get("node_stream")
    if node and node.get("total_ms"):
        lines += [
            "",
            f"Node machinery under a {node['rate_hz']:.0f} Hz 640x480 stream for {node['seconds']:.0f} s "
            f"({node['backend']}, no ROS transport): {node['frames_sent']} frames in, {node['captioned']} "
            f"captioned, {node['dropped']} replaced in the latest-frame slot. Frame-in -> caption-out "
            f"{node['total_ms']['median']:.1f} ms median ({node['total_ms']['p90']:.1f} p90) = wait in slot "
            f"{node['wait_ms']['median']:.1f} + model {node['model_ms']['median']:.1f} ms (medians); "
            "node overhead (scheduling delay "
            f"once the frame and the worker were ready) {node['overhead_ms']['median']:.2f} ms median "
            f"({node['overhead_ms']['p90']:.2f} p90). "
            f"Histogram of total ms (edges {node['histogram_total_ms']['edges']}): "
            f"{node['histogram_total_ms']['counts']}. Target for frame-in -> caption-out: {TARGETS['node']}.",
        ]
    for b in results["backends"]:
        lines += kernel_lines(b)
    lines += ["", "Definitions: see `benchmarks/suite.py`. Raw numbers: the JSON file beside this one.", ""]
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = results["backends"]
    names = [b["name"] for b in backends]
    batch = results["config"]["decode_batch"]
    panels = [
        ("vision+projector, 7 tiles (ms)", [_get(b, "vision_ms", "7", "median") for b in backends]),
        ("time to first token, 7 tiles (ms)", [_get(b, "ttft_ms", "max6", "median") for b in backends]),
        ("caption end to end (ms)", [_get(b, "caption_ms", "median") for b in backends]),
        ("decode batch 1 (tok/s)", [_get(b, "decode_b1", "tokens_per_s") for b in backends]),
        (f"decode batch {batch} (tok/s)", [_get(b, f"decode_b{batch}", "tokens_per_s") for b in backends]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    colours = ["#888888", "#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for ax, (title, values) in zip(axes, panels, strict=True):
        heights = [v or 0.0 for v in values]
        ax.bar(range(len(names)), heights, color=colours[: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, heights[i], _fmt(v), ha="center", va="bottom", fontsize=8)
    ceiling = _get(results, "ceiling", "tokens_per_s_measured") or _get(results, "ceiling", "tokens_per_s_datasheet")
    if ceiling:
        axes[3].axhline(ceiling, color="black", linestyle="--", linewidth=1)
        axes[3].text(0, ceiling, "copy-bandwidth ceiling", fontsize=8, va="bottom")
    fig.suptitle(f"{results['model']} on {results['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out_dir: Path, tag: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{tag}.json", out_dir / f"{tag}.md", out_dir / f"{tag}.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    if results["backends"]:
        chart(results, paths[2])
    return paths
