"""Build the exported engines of an InternVL2 checkpoint for the ``onnx`` and ``trt`` backends.

    python export/build_engines.py --model DIR --out DIR [--max-tiles N] [--precision fp16|bf16|fp32]
        [--trt auto|tensorrt|tensorrt_rtx|off] [--llm-quant none|int8|int4] [--device cpu|cuda]

Stages (each skipped on a re-run when its inputs are unchanged, by hash): vision ONNX (checked against
torch), TensorRT engine, embedding table, decoder ONNX (checked against torch), decoder quantisation
(its accuracy cost measured). Everything is recorded in OUT/manifest.json.

--precision fp32 (default) is the CPU export: traced graphs that ONNX Runtime's CPU provider runs and
that match torch fp32 to ~1e-6. fp16/bf16 is the GPU export: the vision graph in half precision with
fused attention (MultiHeadAttention), and a decoder built from ONNX Runtime's fused ops with a static,
in-place KV cache (export/fused_decoder.py), which the onnx backend runs with CUDA graphs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from export.manifest import Manifest, stage_key, tool_versions
from export.progress import Progress
from ivl_ros.errors import IvlError
from ivl_ros.model.backends.engines import (
    STAGE_DECODER,
    STAGE_EMBEDDING,
    STAGE_QUANTIZE,
    STAGE_TENSORRT,
    STAGE_VISION,
    TensorRTUnavailableError,
    checkpoint_fingerprint,
    default_engines_dir,
    stage_file,
)
from ivl_ros.model.defaults import resolve_model_path
from ivl_ros.model.options import UPSTREAM_MAX_TILES, add_max_tiles_option, device_name
from ivl_ros.outdir import check_output_dir, make_output_dir

VISION_FILE, ENGINE_FILE, CACHE_FILE = "vision.onnx", "vision.engine", "timing.cache"
TRT_VISION_FILE = "vision_trt.onnx"  # the plain-attention graph TensorRT parses when vision.onnx is fused
EMBED_FILE, DECODER_FILE = "embed_tokens.npy", "decoder.onnx"
QUANT_FILES = {"int8": "decoder_int8.onnx", "int4": "decoder_int4.onnx"}
QUANT_QUESTIONS = [
    "What is in front of the robot?",
    "Describe the room.",
    "Is there a chair?",
    "Would a sofa be found here?",
    "Where is the door?",
    "Provide a one-sentence caption.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="build_engines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="checkpoint directory (default: $IVL_MODEL or the demo model)")
    p.add_argument(
        "--out",
        type=Path,
        help="engines directory to write (default: <checkpoint>-engines next to "
        "the checkpoint, where the onnx/trt backends look when no engines path is given)",
    )
    add_max_tiles_option(
        p, UPSTREAM_MAX_TILES, f"{UPSTREAM_MAX_TILES}; the largest max_tiles the engines serve, +1 thumbnail"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="fp32: the CPU export; fp16/bf16: the GPU export (fused attention, static KV cache)",
    )
    p.add_argument("--trt", choices=["auto", "tensorrt", "tensorrt_rtx", "off"], default="auto")
    p.add_argument("--llm-quant", choices=["none", "int8", "int4"], default="none")
    p.add_argument(
        "--device",
        type=device_name,
        default="cpu",
        help="torch device for export and the reference (cpu, cuda, cuda:N)",
    )
    return p.parse_args(argv)


class Builder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model_path = resolve_model_path(args.model, log=lambda msg: print(msg, file=sys.stderr)).resolve()
        # Checked now, created once the checkpoint has passed its checks (run()).
        self.out = check_output_dir(args.out or default_engines_dir(self.model_path), "--out")
        self.progress = Progress(total=5)
        self._loaded = None
        # fp32: traced graphs for ONNX Runtime's CPU provider (and TensorRT); fp16/bf16: fused graphs for GPUs.
        self.fp32 = args.precision == "fp32"

    # -- shared inputs -----------------------------------------------------------------------------
    @property
    def loaded(self):
        """The torch model, loaded only when a stage actually has to run."""
        if self._loaded is None:
            from ivl_ros.model.checkpoint import load_model

            start = time.perf_counter()
            # "exact" attention is what the torch backend uses on CPU fp32: the exported graphs match it.
            attention = "exact" if self.args.device == "cpu" else "eager"
            self._loaded = load_model(self.model_path, device=self.args.device, dtype="float32", attention=attention)
            self.progress.say(f"    loaded {self.model_path} in {time.perf_counter() - start:.1f}s")
        return self._loaded

    def providers(self) -> list[str]:
        from ivl_ros.model.backends.onnx_backend import ort_providers

        try:
            return ort_providers(self.args.device)
        except IvlError:
            return ["CPUExecutionProvider"]  # compare on CPU when ORT has no CUDA provider

    def describe(self, ckpt_hash: str, spec, layout: str) -> None:
        tiles_max = self.args.max_tiles + (1 if spec.use_thumbnail and self.args.max_tiles > 1 else 0)
        self.tile_profile = (1, min(tiles_max, 7 if tiles_max >= 7 else tiles_max), tiles_max)
        m = self.manifest.data
        m["source"] = {"path": str(self.model_path), "checkpoint_hash": ckpt_hash, "layout": layout}
        m["spec"] = spec.to_json()
        m["precision"] = {
            "vision": self.args.precision,
            "decoder": self.args.precision,
            "decoder_quant": self.args.llm_quant,
        }
        m["max_tiles"] = self.args.max_tiles
        m["tools"] = tool_versions()
        m["vision"] = {"tile_profile": dict(zip(("min", "opt", "max"), self.tile_profile, strict=True))}
        m["decoder"] = {
            "runtime_stage": STAGE_QUANTIZE if self.args.llm_quant != "none" else STAGE_DECODER,
            "graph": "traced" if self.fp32 else "fused",
        }
        self.manifest.save()

    # -- stages ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        from ivl_ros.model.spec import load_spec

        start = time.perf_counter()
        layout, spec, tokenizer = load_spec(self.model_path)
        ckpt = checkpoint_fingerprint(self.model_path)
        self.manifest = Manifest(make_output_dir(self.out, "--out"))
        self.progress.say(f"checkpoint {self.model_path} ({layout} layout), hash {ckpt}")
        self.describe(ckpt, spec, layout)
        self.spec, self.tokenizer = spec, tokenizer
        vision_key = self.stage_vision(ckpt)
        self.stage_tensorrt(vision_key)
        self.stage_embedding(ckpt)
        decoder_key = self.stage_decoder(ckpt)
        self.stage_quantize(decoder_key)
        self.manifest.data["total_seconds_last_run"] = round(time.perf_counter() - start, 2)
        self.manifest.save()
        self.progress.say(f"engines in {self.out} ({time.perf_counter() - start:.1f}s)")
        return self.manifest.data

    def stage_vision(self, ckpt: str) -> str:
        attention = "plain" if self.fp32 else "fused"
        # The fused graph has ONNX Runtime's MultiHeadAttention, which TensorRT cannot parse: when TensorRT may be
        # used, this stage also writes the plain graph in the same precision (TensorRT fuses attention itself).
        # Made here, not in the TensorRT stage, so that a Jetson builds its engine from copied ONNX files alone.
        trt_graph = not self.fp32 and self.args.trt != "off"
        key = stage_key(
            stage=STAGE_VISION,
            ckpt=ckpt,
            precision=self.args.precision,
            tiles=self.tile_profile[2],
            attention=attention,
            trt_graph=trt_graph,
        )
        with self.progress.stage(f"vision ONNX (ViT + pixel shuffle + projector, {attention} attention)") as note:
            if self.manifest.is_fresh(STAGE_VISION, key):
                note["result"] = "unchanged, skipped"
                return key
            from export.vision import VISION_INPUT, VISION_OUTPUT, compare_vision, export_vision

            path = self.out / VISION_FILE
            t0 = time.perf_counter()
            info = export_vision(
                self.loaded.model,
                self.spec.tile_size,
                self.tile_profile[2],
                self.args.precision,
                path,
                attention=attention,
            )
            files = {"file": VISION_FILE}
            if trt_graph:
                export_vision(
                    self.loaded.model,
                    self.spec.tile_size,
                    self.tile_profile[2],
                    self.args.precision,
                    self.out / TRT_VISION_FILE,
                    attention="plain",
                )
                files["trt_onnx"] = TRT_VISION_FILE
            export_s = time.perf_counter() - t0
            counts = sorted({1, min(3, self.tile_profile[2])})
            providers = self.providers()
            if self.args.precision == "bf16" and providers[0] == "CPUExecutionProvider":
                check = {
                    "max_abs_diff": None,
                    "reason": "ONNX Runtime's CPU provider cannot run bf16 Conv; "
                    "checked on CUDA (build with --device cuda) or by TensorRT",
                }
            else:
                check = compare_vision(self.loaded.model, path, self.spec.tile_size, counts, providers)
            self.manifest.record(
                STAGE_VISION,
                key,
                "done",
                files,
                export_seconds=round(export_s, 2),
                input=VISION_INPUT,
                output=VISION_OUTPUT,
                check=check,
                **info,
            )
            diff = check["max_abs_diff"]
            note["detail"] = f"max abs diff vs torch {diff:.2e}" if diff is not None else check["reason"]
        return key

    def stage_tensorrt(self, vision_key: str) -> None:
        with self.progress.stage(f"TensorRT engine (--trt {self.args.trt})") as note:
            if self.args.trt == "off":
                self.manifest.record(STAGE_TENSORRT, "", "skipped", reason="--trt off")
                note["result"] = "off"
                return
            from ivl_ros.model.backends.trt_vision import import_tensorrt

            try:
                module_name, trt = import_tensorrt(self.args.trt)
            except TensorRTUnavailableError as exc:
                if self.args.trt != "auto":
                    raise
                self.manifest.record(STAGE_TENSORRT, "", "skipped", reason=str(exc))
                note["result"], note["detail"] = "skipped", "no TensorRT package importable"
                return
            key = stage_key(
                stage=STAGE_TENSORRT,
                vision=vision_key,
                module=module_name,
                version=trt.__version__,
                profile=self.tile_profile,
            )
            if self.manifest.is_fresh(STAGE_TENSORRT, key):
                note["result"] = "unchanged, skipped"
                return
            from export.tensorrt_build import build_vision_engine

            vision = self.manifest.stage(STAGE_VISION)
            source = stage_file(self.manifest.data, self.out, STAGE_VISION, "file" if self.fp32 else "trt_onnx")
            info = build_vision_engine(
                source,
                self.out / ENGINE_FILE,
                self.out / CACHE_FILE,
                module_name,
                self.tile_profile,
                self.spec.tile_size,
                vision["input"],
                vision["output"],
            )
            self.manifest.record(
                STAGE_TENSORRT,
                key,
                "done",
                {"file": ENGINE_FILE, "timing_cache": CACHE_FILE, "onnx": source.name},
                **info,
            )
            note["detail"] = (
                f"{module_name} {trt.__version__}, targets {','.join(info['compute_capabilities'])}, "
                f"{info['engine_bytes'] / 1e6:.1f} MB"
            )

    def stage_embedding(self, ckpt: str) -> None:
        key = stage_key(stage=STAGE_EMBEDDING, ckpt=ckpt)
        with self.progress.stage("embedding table (.npy)") as note:
            if self.manifest.is_fresh(STAGE_EMBEDDING, key):
                note["result"] = "unchanged, skipped"
                return
            from export.embedding import export_embedding

            info = export_embedding(self.loaded.model, self.out / EMBED_FILE)
            self.manifest.record(STAGE_EMBEDDING, key, "done", {"file": EMBED_FILE}, **info)
            note["detail"] = f"{info['shape']}"

    def stage_decoder(self, ckpt: str) -> str:
        graph = "traced" if self.fp32 else "fused"
        key = stage_key(stage=STAGE_DECODER, ckpt=ckpt, precision=self.args.precision, graph=graph)
        with self.progress.stage(f"decoder ONNX ({graph}, {self.args.precision}, KV cache)") as note:
            if self.manifest.is_fresh(STAGE_DECODER, key):
                note["result"] = "unchanged, skipped"
                return key
            path = self.out / DECODER_FILE
            t0 = time.perf_counter()
            if self.fp32:
                from export.decoder import compare_decoder, export_decoder

                info = export_decoder(self.loaded.model, path)
                export_s = time.perf_counter() - t0
                check = compare_decoder(self.loaded.model, path, self.providers())
            else:
                from export.fused_decoder import build_fused_decoder, compare_fused_decoder

                info = build_fused_decoder(self.loaded.model, path, self.args.precision)
                export_s = time.perf_counter() - t0
                check = compare_fused_decoder(
                    self.loaded.model, path, self.providers(), self.args.precision, self.args.device
                )
            self.manifest.record(
                STAGE_DECODER,
                key,
                "done",
                {"file": DECODER_FILE},
                export_seconds=round(export_s, 2),
                check=check,
                **info,
            )
            diff = check.get("logits_max_abs_diff")
            note["detail"] = f"logits max abs diff vs torch {diff:.2e}" if diff is not None else check["reason"]
        return key

    def stage_quantize(self, decoder_key: str) -> None:
        mode = self.args.llm_quant
        with self.progress.stage(f"decoder quantisation (--llm-quant {mode})") as note:
            if mode == "none":
                note["result"] = "not requested"
                return
            key = stage_key(stage=STAGE_QUANTIZE, decoder=decoder_key, mode=mode)
            if self.manifest.is_fresh(STAGE_QUANTIZE, key):
                note["result"] = "unchanged, skipped"
                return
            import numpy as np

            from export.quantize import measure_quantization, onnx_size, quantize_decoder
            from ivl_ros.model.prompt import chat_prompt

            src, dst = self.out / DECODER_FILE, self.out / QUANT_FILES[mode]
            t0 = time.perf_counter()
            info = quantize_decoder(src, dst, mode)
            quant_s = time.perf_counter() - t0
            table = np.load(self.out / EMBED_FILE, mmap_mode="r", allow_pickle=False)
            prompts = [
                self.tokenizer.encode(
                    chat_prompt(q, None, self.spec.tokens_per_tile, (), self.spec.system_message, self.spec.template)[1]
                )
                for q in QUANT_QUESTIONS
            ]
            accuracy = measure_quantization(
                src,
                dst,
                table,
                prompts,
                new_tokens=16,
                providers=self.providers(),
                decoder_info=self.manifest.stage(STAGE_DECODER),
                device=self.args.device,
            )
            sizes = {
                "source_precision": self.args.precision,
                "float_bytes": onnx_size(src),
                "quant_bytes": onnx_size(dst),
            }
            sizes["ratio"] = round(sizes["quant_bytes"] / sizes["float_bytes"], 4)
            if self.fp32:
                sizes["fp32_bytes"] = sizes["float_bytes"]  # the name older manifests and tests read
            self.manifest.record(
                STAGE_QUANTIZE,
                key,
                "done",
                {"file": QUANT_FILES[mode]},
                mode=mode,
                quantize_seconds=round(quant_s, 2),
                accuracy=accuracy,
                size=sizes,
                **info,
            )
            note["detail"] = (
                f"size x{sizes['ratio']:.2f}, identical greedy {accuracy['identical_sequences']}/"
                f"{accuracy['prompts']}, first-step logit drift "
                f"{accuracy['first_step_logits_max_abs_diff']:.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        Builder(args).run()
    except IvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
