"""Loading the ``onnx`` / ``trt`` backends from an engines directory written by export/build_engines.py.

Every artifact is checked before use: its sha256 against the manifest (``stage_file``), then what it must be
(the graphs' inputs and outputs, the embedding table's shape, hidden sizes that agree). Anything else is an
EngineError that names the file and says "rebuild the engines", never a raw ONNX Runtime or numpy error.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

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
    rebuild_hint,
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


DECODER_INPUTS = ("inputs_embeds", "attention_mask", "position_ids")


def _ort_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a file it cannot load (its pybind exception types) plus shape mishaps."""
    import onnxruntime.capi.onnxruntime_pybind11_state as state

    own = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, IndexError, TypeError, ValueError)


def _dim(shape, i: int) -> int | None:
    """A static dimension of an ORT shape (None when symbolic)."""
    try:
        value = shape[i]
    except IndexError:
        return None
    return value if isinstance(value, int) else None


def _open(make, path: Path, hint: str):
    try:
        return make()
    except _ort_errors() as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"{path}: ONNX Runtime cannot load it ({first}); {hint}") from None


def _check_vision(vision: OrtVision, path: Path, info: dict, spec: ModelSpec, hint: str) -> int | None:
    """The vision graph takes (tiles, 3, S, S) under the recorded input name; returns its hidden size."""
    inputs, outputs = vision.session.get_inputs(), vision.session.get_outputs()
    want = info.get("input")
    shape = inputs[0].shape if len(inputs) == 1 else []
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or (want and inputs[0].name != want)
        or len(shape) != 4
        or _dim(shape, 1) != 3
        or _dim(shape, 2) not in (None, spec.tile_size)
    ):
        found = ", ".join(f"{i.name}{i.shape}" for i in inputs)
        raise EngineError(
            f"{path}: not the vision graph (expected one input {want or 'pixel_values'}[tiles, 3, "
            f"{spec.tile_size}, {spec.tile_size}], found {found}); {hint}"
        )
    return _dim(outputs[0].shape, 2)


def _check_decoder(decoder: OrtDecoder, path: Path, hint: str) -> int | None:
    """The decoder graph takes (inputs_embeds, attention_mask, position_ids, past...); returns its hidden size."""
    names = tuple(decoder.input_names[:3])
    outputs = decoder.output_names
    if (
        names != DECODER_INPUTS
        or not outputs
        or outputs[0] != "logits"
        or len(decoder.past_names) < 2
        or len(decoder.past_names) != len(outputs) - 1
    ):
        raise EngineError(
            f"{path}: not the decoder graph (expected inputs {', '.join(DECODER_INPUTS)}, past key/"
            f"values and outputs logits, presents; found inputs {', '.join(decoder.input_names[:4])}"
            f"...); {hint}"
        )
    return _dim(decoder.session.get_inputs()[0].shape, 2)


def _load_embedding(path: Path, tokenizer: InternLM2Tokenizer, hidden: set[int], hint: str) -> np.ndarray:
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise EngineError(f"{path}: not a readable .npy table ({exc}); {hint}") from None
    if (
        not isinstance(table, np.ndarray)
        or table.ndim != 2
        or table.dtype != np.float32
        or table.shape[0] < tokenizer.vocab_size
        or (hidden and table.shape[1] not in hidden)
    ):
        raise EngineError(
            f"{path}: embedding table is {getattr(table, 'dtype', '?')} "
            f"{tuple(getattr(table, 'shape', ()))}; expected float32 (>= {tokenizer.vocab_size} tokens, "
            f"hidden {'/'.join(map(str, sorted(hidden))) or '?'}) matching the graphs; {hint}"
        )
    return table


def open_decoder(path: Path, providers: list[str], device: str, info: dict):
    """The runtime for a decoder ONNX: the fused graph (static in-place cache) or the traced one.

    ``info`` is the manifest's decoder stage, which says which graph the build wrote."""
    if info.get("graph") == "fused":
        from ivl_ros.model.backends.ort_fused import FusedDecoder

        return FusedDecoder(path, providers, device, max_positions=info.get("max_positions"))
    return OrtDecoder(path, providers, device)


def load_exported_backend(
    backend: str, model_path: str | Path, engines_path: str | Path | None, device: str = "cpu"
) -> tuple[ExportedBackend, InternLM2Tokenizer, ModelSpec]:
    model_path = Path(model_path)
    engines_dir = Path(engines_path) if engines_path else default_engines_dir(model_path)
    _, spec, tokenizer = load_spec(model_path)
    manifest = read_manifest(engines_dir)
    check_source(manifest, model_path, engines_dir)
    hint = rebuild_hint(engines_dir, manifest)
    low, high = tile_range(manifest)
    providers = ort_providers(device)
    hidden = set()
    if backend == "onnx":
        path = stage_file(manifest, engines_dir, STAGE_VISION)
        vision = _open(lambda: OrtVision(path, providers, high, device), path, hint)
        hidden.add(_check_vision(vision, path, manifest["stages"][STAGE_VISION], spec, hint))
    elif backend == "trt":
        from ivl_ros.model.backends.trt_vision import TrtVision

        engine = stage_file(manifest, engines_dir, STAGE_TENSORRT)
        vision = TrtVision(engine, manifest["stages"][STAGE_TENSORRT], high, device)
        hidden.add(vision.out_tail[-1] if vision.out_tail else None)
    else:
        raise EngineError(f"backend {backend!r} does not use exported engines")
    path = decoder_path(manifest, engines_dir)
    info = manifest["stages"].get(STAGE_DECODER, {})
    decoder = _open(lambda: open_decoder(path, providers, device, info), path, hint)
    if info.get("graph") == "fused":
        hidden.add(getattr(decoder, "hidden", None))  # its inputs are its own (in-place cache): checked on load
    else:
        hidden.add(_check_decoder(cast(OrtDecoder, decoder), path, hint))  # open_decoder: any other graph is traced
    hidden.discard(None)
    if len(hidden) > 1:
        raise EngineError(
            f"{engines_dir}: the vision and decoder graphs disagree on the hidden size ({sorted(hidden)}); {hint}"
        )
    embedding = _load_embedding(stage_file(manifest, engines_dir, STAGE_EMBEDDING), tokenizer, hidden, hint)
    return ExportedBackend(backend, spec, vision, decoder, embedding, (low, high)), tokenizer, spec
