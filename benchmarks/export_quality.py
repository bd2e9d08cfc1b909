"""What the GPU export and its quantisation cost in accuracy, on the demo model and the caption regression set.

    python benchmarks/export_quality.py --work DIR [--model models/ivl-demo] [--device cpu|cuda]
        [--out benchmarks/results] [--tag demo-export-quality]

Builds the fp16 engines (fused graphs) and int8/int4 copies of their decoder, captions the 16 regression images
(tests/data/caption_regression) with the torch backend (fp32, the reference) and each engine set, and reports:
captions identical to torch and to the fp16 engines, CIDEr against the references (and the committed baseline),
and the quantisation stage's own decoder check (greedy agreement, first-step logit drift on six chat prompts).
The demo model is a real trained model (peaked logits), so, unlike random weights, its agreement means something.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

REGRESSION = REPO / "tests" / "data" / "caption_regression"
VARIANTS = ("fp16", "int8", "int4")


def build_variants(model: Path, work: Path, device: str, max_tiles: int = 6) -> dict[str, Path]:
    """fp16 engines, then int8/int4 copies with only the quantisation stage run on top."""
    import shutil

    from export.build_engines import main as build

    dirs = {v: work / f"engines-{v}" for v in VARIANTS}
    common = [
        "--model",
        str(model),
        "--max-tiles",
        str(max_tiles),
        "--precision",
        "fp16",
        "--trt",
        "off",
        "--device",
        device,
    ]
    if build([*common, "--out", str(dirs["fp16"])]):
        raise RuntimeError("fp16 build failed")
    for mode in ("int8", "int4"):
        if not dirs[mode].exists():
            shutil.copytree(dirs["fp16"], dirs[mode])
        if build([*common, "--out", str(dirs[mode]), "--llm-quant", mode]):
            raise RuntimeError(f"{mode} build failed")
    return dirs


def caption_set(engine) -> dict[int, str]:
    images = json.loads((REGRESSION / "captions.json").read_text())["images"]
    return {im["id"]: engine.caption(REGRESSION / "images" / im["file_name"]).answer for im in images}


def measure(model: Path, dirs: dict[str, Path], device: str) -> dict:
    from ivl_ros.eval.regression import check_caption_regression
    from ivl_ros.model.engine import VisionLanguageEngine

    def cider(captions: dict[int, str]) -> float:
        return check_caption_regression(
            captions.items(), REGRESSION / "captions.json", REGRESSION / "baseline_metrics.json", tolerance=0.10
        ).cider

    reference = caption_set(VisionLanguageEngine.load(model))
    out: dict = {"torch_fp32": {"cider": cider(reference)}}
    fp16_captions: dict[int, str] = {}
    for variant, path in dirs.items():
        engine = VisionLanguageEngine.load(model, backend="onnx", engines_path=path, device=device)
        t0 = time.perf_counter()
        captions = caption_set(engine)
        seconds = time.perf_counter() - t0
        if variant == "fp16":
            fp16_captions = captions
        manifest = json.loads((path / "manifest.json").read_text())
        quant = manifest["stages"].get("decoder_quant", {})
        out[variant] = {
            "cider": cider(captions),
            "identical_to_torch_fp32": sum(captions[k] == reference[k] for k in reference),
            "identical_to_fp16_engines": sum(captions[k] == fp16_captions[k] for k in reference),
            "images": len(reference),
            "caption_seconds": round(seconds, 2),
            "decoder_check": quant.get("accuracy") or manifest["stages"]["decoder_onnx"].get("check"),
            "decoder_bytes": quant.get("size", {}).get("quant_bytes"),
            "differing": {
                k: {"torch": reference[k], variant: captions[k]} for k in reference if captions[k] != reference[k]
            },
        }
    return out


def markdown(result: dict) -> str:
    base = json.loads((REGRESSION / "baseline_metrics.json").read_text())["CIDEr"]
    rows = [f"| torch fp32 (reference) | {result['torch_fp32']['cider']:.3f} | 16/16 | | |"]
    for variant in VARIANTS:
        r = result[variant]
        check = r["decoder_check"] or {}
        if "token_agreement" in check:
            detail = (
                f"greedy identical {check['identical_sequences']}/{check['prompts']}, token agreement "
                f"{check['token_agreement']:.2f}, first-step logit drift "
                f"{check['first_step_logits_max_abs_diff']:.3f} (std {check['first_step_logits_std']:.2f})"
            )
        else:
            detail = (
                f"vs torch fp32: logits max abs diff {check.get('logits_max_abs_diff', 0):.3g}, top-1 "
                f"agreement {check.get('top1_agreement')}"
            )
        rows.append(
            f"| onnx {variant} | {r['cider']:.3f} | {r['identical_to_torch_fp32']}/{r['images']} | "
            f"{r['identical_to_fp16_engines']}/{r['images']} | {detail} |"
        )
    return (
        "\n".join(
            [
                f"# The GPU export's accuracy on the demo model ({result['model']})",
                "",
                f"Command: `{result['command']}` ({result['device']}, onnxruntime {result['onnxruntime']}). "
                f"Captions of the {result['fp16']['images']} caption-regression images (upstream caption settings: "
                "max 6 tiles, greedy, 8..30 new tokens); CIDEr against their references (committed baseline "
                f"{base:.3f}, from torch fp32). The decoder check column is the build's own measurement: the "
                "quantised decoder against the fp16 one (six chat prompts, 16 greedy tokens), or the fp16 decoder "
                "against torch fp32.",
                "",
                "| engines | CIDEr | captions identical to torch fp32 | identical to onnx fp16 | decoder check |",
                "|---|---|---|---|---|",
                *rows,
                "",
            ]
        )
        + "\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "ivl-demo")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--tag", default="demo-export-quality")
    args = ap.parse_args()
    import onnxruntime as ort

    dirs = build_variants(args.model, args.work, args.device)
    result = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model.name,
        "device": args.device,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        **measure(args.model, dirs, args.device),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.tag}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
