"""``python -m benchmarks``: every backend measured in one process, results to benchmarks/results/."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.backends import EngineBench, HFBaseline
from benchmarks.suite import SuiteConfig, make_workload, run_suite, token_identity
from ivl_ros.model.defaults import resolve_model_path
from ivl_ros.model.options import DEVICE_HELP, DTYPES, device_name, int_range

# The environment switches of the fast and onnx paths: when set, they are part of what was measured, so the
# reported command carries them.
PATH_SWITCHES = (
    "IVL_DECODE_CONFIGS",
    "IVL_PREFILL_COMPILE",
    "IVL_VIT_COMPILE",
    "IVL_FUSED_DECODE",
    "IVL_ORT_CUDA_GRAPH",
)

log = logging.getLogger("benchmarks")

BACKENDS = ("hf-baseline", "torch", "torch-fast", "onnx")
# Datasheet memory bandwidth (bytes/s) by a substring of torch.cuda.get_device_name().
DATASHEET_BW = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H200": 4.8e12}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        type=Path,
        help="checkpoint directory (upstream or converted layout); default: $IVL_MODEL or the embedded demo model",
    )
    src.add_argument(
        "--random-init",
        choices=("internvl2-2b", "tiny"),
        help="build this architecture with random weights on the device (no download)",
    )
    p.add_argument(
        "--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu", help=DEVICE_HELP
    )
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma list from {BACKENDS}")
    p.add_argument("--engines", type=Path, help="exported engines directory for the onnx backend")
    p.add_argument("--tiles", default="1,3,7,13", help="tile counts for the vision+projector timing")
    p.add_argument("--decode-tokens", type=int_range(1), default=128)
    p.add_argument("--decode-batch", type=int_range(1), default=4)
    p.add_argument("--warmup", type=int_range(0), default=3)
    p.add_argument("--reps", type=int_range(1), default=10)
    p.add_argument("--slow-reps", type=int_range(1), default=3, help="repetitions of multi-second eager decodes")
    p.add_argument("--no-compile", action="store_true", help="torch-fast: CUDA graphs without torch.compile")
    p.add_argument(
        "--node-stream",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the suite, run the node's frame slot + inference thread on a 30 Hz stream with the "
        "fastest torch engine for this long (0: skip)",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default=None, help="file name stem (default: derived from model and device)")
    args = p.parse_args(argv)
    if args.random_init is None:
        args.model = resolve_model_path(args.model, log=log.info)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backend_list) - set(BACKENDS))
    if unknown:
        p.error(f"unknown backends {unknown}; choose from {BACKENDS}")
    return args


def decode_ceiling(model: torch.nn.Module, context: int, device: torch.device) -> dict:
    """Bytes every decode step must read (LLM weights except the embedding table) over memory bandwidth."""
    lm = model.model.language_model
    params = sum(p.numel() for p in lm.layers.parameters()) + sum(p.numel() for p in lm.norm.parameters())
    params += model.lm_head.weight.numel()
    elem = model.lm_head.weight.element_size()
    cfg = lm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem * context
    out = {
        "decode_params": params,
        "bytes_per_param": elem,
        "decode_bytes": params * elem,
        "kv_bytes_at_context": kv,
        "context": context,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        bw = next((v for k, v in DATASHEET_BW.items() if k in name), None)
        measured = copy_bandwidth(device)
        out.update(
            {
                "datasheet_tb_s": bw and bw / 1e12,
                "measured_tb_s": measured / 1e12,
                "tokens_per_s_datasheet": bw and bw / (params * elem),
                "tokens_per_s_measured": measured / (params * elem),
            }
        )
    return out


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy rate, bytes read plus bytes written per second (median of 10)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000.0)
    del src, dst
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


def guard_kernel_table(res: dict, fast, prompt_tokens: int, ceiling: dict) -> None:
    """The per-kernel table of the fused decode step (on the batch-1 state the suite used), if it ran fused."""
    states = [st for (batch, _), st in fast._states.items() if batch == 1 and st.fused is not None]
    if not states or not ceiling.get("measured_tb_s"):
        return
    from benchmarks.kernels import kernel_table

    st = states[-1]
    try:
        with torch.inference_mode():
            st.slot.fill_(prompt_tokens)  # attention over the bench prompt's context
            res["decode_kernels"] = kernel_table(st.fused, st, ceiling["measured_tb_s"] * 1e12)
    except Exception as exc:  # the table is extra: never lose the run for it
        log.exception("decode kernel table failed")
        res["errors"]["decode_kernels"] = f"{type(exc).__name__}: {exc}"


def _load(args: argparse.Namespace, workdir: Path):
    if args.random_init:
        from benchmarks.random_model import random_model

        return random_model(args.random_init, workdir, device=args.device, dtype=args.dtype)
    from ivl_ros.model.checkpoint import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def _onnx_bench(args: argparse.Namespace):
    """The onnx backend, or the reason it is skipped."""
    if args.engines is None:
        return None, "no --engines DIR given (exported engines come from export/build_engines.py)"
    if args.model is None:
        return None, "exported engines belong to a checkpoint directory: pass --model DIR with --engines"
    try:
        from ivl_ros.model.engine import VisionLanguageEngine

        engine = VisionLanguageEngine.load(args.model, backend="onnx", engines_path=args.engines, device=args.device)
    except Exception as exc:  # missing onnxruntime CUDA EP, engines from another checkpoint, ...
        return None, f"could not load: {type(exc).__name__}: {exc}"
    return EngineBench("onnx", engine, note="onnxruntime, exported engines"), ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from ivl_ros.model.backends.torch_backend import TorchBackend
    from ivl_ros.model.engine import VisionLanguageEngine

    cfg = SuiteConfig(
        tile_counts=tuple(int(t) for t in args.tiles.split(",")),
        decode_tokens=args.decode_tokens,
        decode_batch=args.decode_batch,
        warmup=args.warmup,
        reps=args.reps,
        slow_warmup=min(1, args.warmup),
        slow_reps=args.slow_reps,
    )
    with tempfile.TemporaryDirectory() as tmp:
        loaded = _load(args, Path(tmp))
    device = next(loaded.model.parameters()).device
    model_name = f"{args.random_init} (random weights)" if args.random_init else args.model.resolve().name
    plain = VisionLanguageEngine(TorchBackend(loaded), loaded.tokenizer, loaded.spec, model_id=model_name)
    work = make_workload(plain, cfg)
    import transformers

    results = {
        "model": model_name,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "command": " ".join(
            [f"{k}={shlex.quote(os.environ[k])}" for k in PATH_SWITCHES if k in os.environ]
            + ["python -m benchmarks"]
            + [shlex.quote(a) for a in argv]
        ),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "config": {**cfg.__dict__, "tile_counts": list(cfg.tile_counts)},
        "ceiling": decode_ceiling(loaded.model, len(work.prepared_max6.prompt_ids), device),
        "preprocess": work.preprocess_ms,
        "backends": [],
        "skipped": {},
    }
    tag = args.tag or (
        "cpu-smoke" if device.type == "cpu" else f"{results['device'].split()[1].lower()}-{args.random_init or 'model'}"
    )
    for name in args.backend_list:
        log.info("backend %s", name)
        if name == "hf-baseline":
            bench = HFBaseline(plain)
        elif name == "torch":
            bench = EngineBench("torch", plain, note="project engine, plain torch backend (DynamicCache, host loop)")
        elif name == "torch-fast":
            from ivl_ros.model.backends.torch_fast import FastTorchBackend

            fast = FastTorchBackend(loaded, compile=not args.no_compile and None)
            fast_engine = VisionLanguageEngine(fast, loaded.tokenizer, loaded.spec, model_name)
            bench = EngineBench(
                "torch-fast",
                fast_engine,
                note="static KV cache, CUDA-graph ViT, prefill (batch-1 lengths) and decode, greedy on device",
            )
            bench.fast = True
        else:
            bench, why = _onnx_bench(args)
            if bench is None:
                results["skipped"][name] = why
                log.info("onnx skipped: %s", why)
                continue
        started = time.perf_counter()
        res = run_suite(bench, work, device, loaded.spec.tile_size, cfg)
        res["seconds"] = time.perf_counter() - started
        if name == "torch-fast":
            res["decode_mode"] = sorted(
                {st.mode for st in fast._states.values() if st.graph is not None} or {fast.decode_mode}
            )
            res["vit_mode"] = fast.vit_mode
            if fast.use_graphs:  # no first-token graph without graphs
                res["prefill_mode"] = fast.prefill_mode
            res["device_tiling"] = fast.tiler is not None
            guard_kernel_table(res, fast, len(work.prepared_max6.prompt_ids), results["ceiling"])
            fast._states.clear()
        results["backends"].append(res)
        report.write(results, args.out, tag)  # after each backend, so that a cut-off run still leaves numbers
    results["token_identity_vs_torch"] = token_identity(results["backends"])
    if args.node_stream > 0:
        from benchmarks.node_latency import stream_latency

        chosen = fast_engine if "torch-fast" in args.backend_list else plain
        log.info("node stream for %.0f s", args.node_stream)
        results["node_stream"] = {
            "backend": chosen.backend.__class__.__name__,
            **stream_latency(chosen, seconds=args.node_stream),
        }
    paths = report.write(results, args.out, tag)
    print(report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
