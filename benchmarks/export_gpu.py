"""The ``onnx`` backend with ONNX Runtime's CUDA provider vs the torch backend, on the full InternVL2-2B geometry.

    python benchmarks/export_gpu.py --work DIR --out RESULT.json [--tiny]

Random weights (nothing can be downloaded): InternViT-300M (24 layers, 1024 wide, 448 px) + projector +
a 24-layer 2048-wide Llama decoder with InternLM2-1.8B's geometry and vocab 92553, with the tiny
sentencepiece tokenizer. Steps: make the checkpoint, build the engines (--trt auto, so TensorRT is
tried where importable), compare greedy token ids on fixed inputs with the torch backend (fp32, CUDA),
then time the vision graph and decoding. ``--tiny`` runs the same on the tiny checkpoint (a CPU smoke run).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from ivl_ros.model.tiny import INTERNVL2_2B_GEOMETRY as FULL_GEOMETRY

FULL_VOCAB = FULL_GEOMETRY["llm"]["vocab_size"]  # 92544 pieces + 9 InternVL tokens; the tiny tokenizer uses ~1k


def make_checkpoint(path: Path, tiny: bool) -> Path:
    """Upstream-layout checkpoint; the full one gets the real vocab size (rows past the tokenizer stay unused)."""
    from ivl_ros.model.checkpoint import save_upstream_tensors
    from ivl_ros.model.tiny import (
        make_tiny_checkpoint,
        random_upstream_tensors,
        tiny_config,
        train_tiny_sentencepiece,
        write_tokenizer_files,
    )

    if tiny:
        return make_tiny_checkpoint(path, overwrite=True)
    import sentencepiece as spm

    path.mkdir(parents=True, exist_ok=True)
    proto = train_tiny_sentencepiece(FULL_GEOMETRY["sp_vocab_size"])
    config = tiny_config(spm.SentencePieceProcessor(model_proto=proto).get_piece_size(), FULL_GEOMETRY)
    config["llm_config"]["vocab_size"] = FULL_VOCAB
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer_files(path, proto)
    save_upstream_tensors(path, random_upstream_tensors(config), max_shard_bytes=4 << 30)
    return path


def frame(seed: int, h: int = 480, w: int = 640):
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // (w - 1)), (y * 255 // (h - 1)), ((x + y) % 64) * 4], axis=-1).astype(np.uint8)
    img[h // 4: h // 2, w // 3: w // 2] = rng.integers(0, 255, 3)
    return img


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def decode_speed(engine, image, new_tokens: int) -> dict:
    """Prefill + new_tokens greedy steps through the backend session (eos never checked: pure speed)."""
    import numpy as np

    p = engine.prepare(image, "Describe the image in detail.", max_tiles=6)
    ids = np.asarray([p.prompt_ids], np.int64)
    session = engine.backend.session(ids, np.ones_like(ids), p.pixel_values)
    start = time.perf_counter()
    logits = session.prefill()
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = session.step(logits.argmax(-1))
    steps = time.perf_counter() - start
    return {"prompt_tokens": int(ids.shape[1]), "tiles": p.num_tiles, "prefill_s": round(prefill, 4),
            "new_tokens": new_tokens, "decode_tokens_per_s": round(new_tokens / steps, 2)}


def token_ids(engine, images, questions, settings) -> list[list[int]]:
    """Greedy ids through the engine's own batching and loop, without decoding to text: random weights
    pick ids past the tiny tokenizer's ~1k pieces (the model vocab is 92553)."""
    from ivl_ros.model.engine import collate_prompts
    from ivl_ros.model.generation import generate

    prepared = [engine.prepare(img, q, max_tiles=6) for img, q in zip(images, questions, strict=True)]
    session = engine.backend.session(*collate_prompts(prepared, engine.tokenizer.pad_id))
    return generate(session, len(prepared), settings, engine.eos_id, engine.tokenizer.pad_id)


def compare(torch_engine, onnx_engine, settings) -> dict:
    images = [frame(0), frame(1, 300, 900), frame(2, 700, 400)]
    questions = ["What is in front of the robot?", "Describe the room.", "Is there a chair?"]
    cases, same = [], 0
    for img, q in zip(images, questions, strict=True):
        ref = token_ids(torch_engine, [img], [q], settings)[0]
        got = token_ids(onnx_engine, [img], [q], settings)[0]
        cases.append({"question": q, "torch": ref, "onnx": got})
        same += ref == got
    ref_b = token_ids(torch_engine, [images[0], None], ["Describe the room.", "Hi"], settings)
    got_b = token_ids(onnx_engine, [images[0], None], ["Describe the room.", "Hi"], settings)
    batch_same = [a == b for a, b in zip(ref_b, got_b, strict=True)]
    return {"identical": same, "cases": len(cases), "batch_rows_identical": batch_same, "details": cases}


def first_logits_diff(torch_engine, onnx_engine) -> float:
    import numpy as np

    p = torch_engine.prepare(frame(0), "What is in front of the robot?", max_tiles=6)
    ids = np.asarray([p.prompt_ids], np.int64)
    a = torch_engine.backend.session(ids, np.ones_like(ids), p.pixel_values).prefill()
    b = onnx_engine.backend.session(ids, np.ones_like(ids), p.pixel_values).prefill()
    return float(np.abs(a - b).max())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    import numpy as np
    import onnxruntime as ort
    import torch

    if args.device.startswith("cuda") and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels that torch brought
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
                    "python": platform.python_version(), "onnxruntime": ort.__version__,
                    "ort_providers": ort.get_available_providers(), "torch": torch.__version__,
                    "geometry": "tiny" if args.tiny else {**FULL_GEOMETRY, "vocab": FULL_VOCAB}}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    t0 = time.perf_counter()
    ckpt = args.work / "ckpt"
    if not (ckpt / "config.json").is_file():  # a warm machine keeps the last call's checkpoint
        ckpt = make_checkpoint(ckpt, args.tiny)
    result["make_checkpoint_s"] = round(time.perf_counter() - t0, 1)
    print(f"checkpoint in {result['make_checkpoint_s']}s", flush=True)
    save()
    engines = args.work / "engines"
    build = [sys.executable, str(Path(__file__).resolve().parent.parent / "export" / "build_engines.py"),
             "--model", str(ckpt), "--out", str(engines), "--max-tiles", "12", "--device", args.device]
    result["build_command"] = " ".join(build[1:])
    t0 = time.perf_counter()
    run = subprocess.run(build, capture_output=True, text=True)
    result["build_s"] = round(time.perf_counter() - t0, 1)
    result["build_log"] = [line for line in run.stderr.splitlines() if line.startswith(("[", "checkpoint", "engines",
                                                                                          "error", "    loaded"))]
    print("\n".join(result["build_log"]), flush=True)
    if run.returncode:
        result["build_error"] = run.stderr[-3000:]
        save()
        return 1
    manifest = json.loads((engines / "manifest.json").read_text())
    result["manifest_checks"] = {k: {kk: v.get(kk) for kk in ("status", "check", "export_seconds", "reason",
                                                               "build_seconds", "compute_capabilities")}
                                 for k, v in manifest["stages"].items()}
    save()

    from ivl_ros.model.engine import GenerationSettings, VisionLanguageEngine

    t0 = time.perf_counter()
    torch_engine = VisionLanguageEngine.load(ckpt, backend="torch", device=args.device, dtype="float32",
                                             attention="eager")
    onnx_engine = VisionLanguageEngine.load(ckpt, backend="onnx", device=args.device, engines_path=engines)
    result["load_both_s"] = round(time.perf_counter() - t0, 1)
    result["ort_session_providers"] = {"vision": onnx_engine.backend.vision.session.get_providers(),
                                       "decoder": onnx_engine.backend.decoder.session.get_providers()}
    settings = GenerationSettings(max_new_tokens=24, min_new_tokens=24)
    result["parity"] = compare(torch_engine, onnx_engine, settings)
    result["prefill_logits_max_abs_diff"] = first_logits_diff(torch_engine, onnx_engine)
    print(f"parity {result['parity']['identical']}/{result['parity']['cases']}, batch "
          f"{result['parity']['batch_rows_identical']}, prefill logits diff {result['prefill_logits_max_abs_diff']}",
          flush=True)
    save()

    rng = np.random.default_rng(0)
    tile = onnx_engine.spec.tile_size
    vision = {}
    for tiles in (1, 7, 13):
        pv = rng.uniform(-2, 2.5, (tiles, 3, tile, tile)).astype(np.float32)
        onnx_engine.backend.image_features(pv)
        torch_engine.backend.image_features(pv)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        o = timed(lambda pv=pv: onnx_engine.backend.image_features(pv), 5)
        t = timed(lambda pv=pv: torch_engine.backend.image_features(pv).cpu(), 5)
        got, ref = onnx_engine.backend.image_features(pv), torch_engine.backend.image_features(pv).cpu().numpy()
        vision[str(tiles)] = {"onnx_ms_median": round(1000 * float(np.median(o)), 2),
                              "torch_ms_median": round(1000 * float(np.median(t)), 2),
                              "max_abs_diff": float(np.abs(got - ref).max())}
    result["vision_latency"] = vision
    print(json.dumps(vision), flush=True)
    save()
    new_tokens = 16 if args.tiny else 64
    decode_speed(onnx_engine, frame(0), 4)  # warm-up (CUDA kernels, allocator)
    result["decode_onnx"] = decode_speed(onnx_engine, frame(0), new_tokens)
    decode_speed(torch_engine, frame(0), 4)
    result["decode_torch"] = decode_speed(torch_engine, frame(0), new_tokens)
    print(result["decode_onnx"], result["decode_torch"], flush=True)
    try:
        VisionLanguageEngine.load(ckpt, backend="trt", device=args.device, engines_path=engines)
        result["trt_backend"] = "loaded"
    except Exception as exc:  # recorded as evidence of the refusal message on this GPU
        result["trt_backend"] = f"{type(exc).__name__}: {exc}"
    result["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
