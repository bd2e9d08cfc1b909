"""The measurements, per backend: vision+projector, time to first token, decode rate, caption latency, memory.

Definitions (also written into the report):

* vision+projector: device time (CUDA events) of ViT + pixel shuffle + projector for N random tiles
  already on the device;
* time to first token: host wall time from prepared inputs (tiles and prompt ids, as the backend's engine
  prepares them: in host memory, or on the device for a backend that tiles there) to the first generated
  token id on the host: upload, ViT, prefill, first token;
* time to first token from the frame: the same with the tiling of the 640x480 frame included;
* decode rate: (generated tokens - 1) / (time for 128 new tokens - time to first token), per batch row,
  times the batch for batch 4 (no ``min_new_tokens``, greedy, real stop token);
* caption: ``engine.caption``-equivalent on a 640x480 frame, tiling at max 6 tiles included, upstream's
  caption settings (greedy, min_new_tokens 8, max_new_tokens 30), text out;
* peak memory: ``torch.cuda.max_memory_allocated`` since the backend's section started (weights included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from benchmarks.timing import device_ms, stats, wall_ms
from ivl_ros.model.engine import CAPTION_PROMPT, CAPTION_SETTINGS, GenerationSettings, PreparedPrompt

log = logging.getLogger(__name__)


@dataclass
class SuiteConfig:
    tile_counts: tuple[int, ...] = (1, 3, 7, 13)
    decode_tokens: int = 128
    decode_batch: int = 4
    warmup: int = 3
    reps: int = 10
    slow_warmup: int = 1  # for multi-second measurements (eager decode of 128 tokens)
    slow_reps: int = 3


def test_frame(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A structured RGB frame (gradients, a box, mild noise), deterministic."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x + y) % 64) * 4], axis=-1)
    frame[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = (200, 40, 40)
    noise = np.random.default_rng(seed).integers(-8, 9, frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


@dataclass
class Workload:
    frame: np.ndarray
    prepared_max6: PreparedPrompt
    prepared_1tile: PreparedPrompt
    preprocess_ms: dict


def make_workload(engine, cfg: SuiteConfig) -> Workload:
    frame = test_frame()
    prep6 = engine.prepare(frame, CAPTION_PROMPT, max_tiles=6)
    prep1 = engine.prepare(frame, CAPTION_PROMPT, max_tiles=1)
    pre = wall_ms(lambda: engine.prepare(frame, CAPTION_PROMPT, max_tiles=6), cfg.warmup, cfg.reps)[0]
    return Workload(
        frame,
        prep6,
        prep1,
        {
            "max6": pre.to_json(),
            "tiles": prep6.num_tiles,
            "prompt_tokens": len(prep6.prompt_ids),
            "prompt_tokens_1tile": len(prep1.prompt_ids),
        },
    )


def _tiles(n: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn((n, 3, size, size), generator=gen, device=device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def _decode_rate(run: Callable[[], list[list[int]]], first_ms: float, batch: int, cfg: SuiteConfig) -> dict:
    timed, rows = wall_ms(run, cfg.slow_warmup, cfg.slow_reps)
    steps = max(len(r) for r in rows) - 1
    per_token = [(t - first_ms) / max(steps, 1) for t in timed.values]
    ms = stats(per_token)
    return {
        "tokens_per_s": batch * 1000.0 / ms.median if ms.median > 0 else None,
        "tokens_per_s_p90_time": batch * 1000.0 / ms.p90 if ms.p90 > 0 else None,
        "ms_per_step": ms.to_json(),
        "total_ms": timed.to_json(),
        "new_tokens": [len(r) for r in rows],
        "token_ids": rows,
        "first_token_ms": first_ms,
        "batch": batch,
    }


def run_suite(bench, work: Workload, device: torch.device, tile_size: int, cfg: SuiteConfig) -> dict:
    """Every metric for one backend; a failing metric is recorded as an error, not raised."""
    out: dict = {"name": bench.name, "note": getattr(bench, "note", ""), "errors": {}}
    if getattr(bench, "fast", False):
        # Fast paths decode 128 tokens in well under a second: afford the full repetitions there.
        cfg = replace(cfg, slow_warmup=cfg.warmup, slow_reps=cfg.reps)

    def guard(key: str, fn: Callable[[], object]) -> None:
        try:
            out[key] = fn()
        except Exception as exc:  # one broken metric must not lose the others of a GPU run
            log.exception("%s: %s failed", bench.name, key)
            out["errors"][key] = f"{type(exc).__name__}: {exc}"

    _reset_peak(device)
    one = GenerationSettings(max_new_tokens=1)
    if bench.has_vision:

        def vision() -> dict:
            res = {}
            for n in cfg.tile_counts:
                pv = _tiles(n, tile_size, device, seed=n)
                res[str(n)] = device_ms(lambda pv=pv: bench.vision(pv), cfg.warmup, cfg.reps).to_json()
            return res

        guard("vision_ms", vision)

    # The backend's own preparation (device tiling puts the tiles on the device); same tokens and tiles.
    prep6, prep1 = bench.prepare(work.frame, 6), bench.prepare(work.frame, 1)

    def ttft() -> dict:
        res = {}
        for label, prep in (("max6", prep6), ("1tile", prep1)):
            res[label] = wall_ms(lambda prep=prep: bench.generate([prep], one), cfg.warmup, cfg.reps)[0].to_json()
            res[label]["tiles"] = prep.num_tiles
        frame = wall_ms(lambda: bench.generate([bench.prepare(work.frame, 6)], one), cfg.warmup, cfg.reps)[0]
        res["max6_from_frame"] = {**frame.to_json(), "tiles": prep6.num_tiles}
        return res

    guard("ttft_ms", ttft)
    first = out.get("ttft_ms", {}).get("max6", {}).get("median", 0.0)
    many = GenerationSettings(max_new_tokens=cfg.decode_tokens)
    guard("decode_b1", lambda: _decode_rate(lambda: bench.generate([prep6], many), first, 1, cfg))
    guard("caption_ms", lambda: _caption(bench, work, cfg))
    out["peak_gb_batch1"] = _peak_gb(device)

    batch = [prep6] * cfg.decode_batch

    def decode_batch() -> dict:
        first_b = wall_ms(lambda: bench.generate(batch, one), cfg.slow_warmup, cfg.slow_reps)[0].median
        return _decode_rate(lambda: bench.generate(batch, many), first_b, cfg.decode_batch, cfg)

    guard(f"decode_b{cfg.decode_batch}", decode_batch)
    out["peak_gb"] = _peak_gb(device)
    return out


def token_identity(backends: list[dict], reference: str = "torch") -> dict:
    """Per backend and workload (decode b1 / bN, 128 new tokens): are its token ids the reference backend's?"""
    ref = next((b for b in backends if b["name"] == reference), None)
    if ref is None:
        return {}
    out: dict = {}
    for b in backends:
        if b["name"] == reference:
            continue
        for key in [k for k in b if k.startswith("decode_b") and isinstance(b[k], dict)]:
            mine, theirs = b[key].get("token_ids"), ref.get(key, {}).get("token_ids")
            if mine is not None and theirs is not None:
                out.setdefault(b["name"], {})[key] = [x == y for x, y in zip(mine, theirs, strict=True)]
        text, ref_text = b.get("caption_ms", {}).get("text"), ref.get("caption_ms", {}).get("text")
        if text is not None and ref_text is not None:
            out.setdefault(b["name"], {})["caption_text"] = text == ref_text
    return out


def _caption(bench, work: Workload, cfg: SuiteConfig) -> dict:
    timed, text = wall_ms(lambda: bench.caption(work.frame, CAPTION_SETTINGS), cfg.warmup, cfg.reps)
    res = timed.to_json()
    res["text"] = text
    return res
