"""Loading the ``onnx`` / ``trt`` backends from an engines directory written by export/build_engines.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ivl_ros.model.backends.engines import (
    STAGE_DECODER,
    STAGE_EMBEDDING,
    STAGE_QUANTIZE,
    STAGE_TENSORRT,
    STAGE_VISION,
    EngineError,
    check_source,
    default_engines_dir,
    read_manifest,
    stage_file,
    tile_range,
)
from ivl_ros.model.backends.onnx_backend import ExportedBackend, OrtDecoder, OrtVision, ort_providers
from ivl_ros.model.spec import ModelSpec, load_spec
from ivl_ros.model.tokenizer import InternLM2Tokenizer


def decoder_path(manifest: dict, engines_dir: Path) -> Path:
    """The quantised decoder when the build made one (its --llm-quant), else the float one."""
    if manifest.get("decoder", {}).get("runtime_stage") == STAGE_QUANTIZE:
        return stage_file(manifest, engines_dir, STAGE_QUANTIZE)
    return stage_file(manifest, engines_dir, STAGE_DECODER)


def open_decoder(path: Path, providers: list[str], device: str, info: dict):
    """The runtime for a decoder ONNX: the fused graph (static in-place cache) or the traced one.

    ``info`` is the manifest's decoder stage, which says which graph the build wrote."""
    if info.get("graph") == "fused":
        from ivl_ros.model.backends.ort_fused import FusedDecoder

        return FusedDecoder(path, providers, device, max_positions=info.get("max_positions"))
    return OrtDecoder(path, providers, device)


def load_exported_backend(backend: str, model_path: str | Path, engines_path: str | Path | None,
                          device: str = "cpu") -> tuple[ExportedBackend, InternLM2Tokenizer, ModelSpec]:
    model_path = Path(model_path)
    engines_dir = Path(engines_path) if engines_path else default_engines_dir(model_path)
    _, spec, tokenizer = load_spec(model_path)
    manifest = read_manifest(engines_dir)
    check_source(manifest, model_path, engines_dir)
    low, high = tile_range(manifest)
    providers = ort_providers(device)
    if backend == "onnx":
        vision = OrtVision(stage_file(manifest, engines_dir, STAGE_VISION), providers, high, device)
    elif backend == "trt":
        from ivl_ros.model.backends.trt_vision import TrtVision

        engine = stage_file(manifest, engines_dir, STAGE_TENSORRT)
        vision = TrtVision(engine, manifest["stages"][STAGE_TENSORRT], high, device)
    else:
        raise EngineError(f"backend {backend!r} does not use exported engines")
    decoder = open_decoder(decoder_path(manifest, engines_dir), providers, device,
                           manifest["stages"].get(STAGE_DECODER, {}))
    embedding = np.load(stage_file(manifest, engines_dir, STAGE_EMBEDDING), mmap_mode="r")
    return ExportedBackend(backend, spec, vision, decoder, embedding, (low, high)), tokenizer, spec
