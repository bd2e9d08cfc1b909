"""The ``onnx`` backend: vision and decoder graphs in ONNX Runtime, embeddings in numpy. Imports no torch.

Semantics match the torch backend: token embeddings from the exported table, image features spliced
in order into the ``<IMG_CONTEXT>`` positions, upstream position ids (cumsum(mask) - 1, padding 1),
a KV cache carried between steps (kept on the device with I/O binding under CUDA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, cast

import numpy as np

from ivl_ros.errors import OptionError
from ivl_ros.model.backends.engines import EngineError, TileCountError
from ivl_ros.model.generation import upstream_position_ids
from ivl_ros.model.spec import ModelSpec


def ort_providers(device: str) -> list[str]:
    """ORT execution providers for ``device`` (cpu, cuda, cuda:N); refuses CUDA when ORT cannot use it."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(f"device {device!r}: this onnxruntime ({ort.__version__}) has no CUDA provider; "
                              "install onnxruntime-gpu instead of onnxruntime")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise OptionError(f"device {device!r} is not one of ('cpu', 'cuda', 'cuda:N')")


def _device_id(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def make_session(path: Path, providers: list[str], device: str = "cpu"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # keep ORT's per-node placement warnings out of user output
    provider_list: list = list(providers)
    if providers[0] == "CUDAExecutionProvider":
        # TF32 off: fp32 graphs then compute in fp32 as torch does by default, which greedy parity relies on.
        cuda_options = {"device_id": _device_id(device), "use_tf32": 0}
        provider_list = [("CUDAExecutionProvider", cuda_options), *providers[1:]]
    return ort.InferenceSession(str(path), sess_options=options, providers=provider_list)


class VisionRunner(Protocol):
    max_batch: int

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """(tiles, 3, S, S) float32 -> (tiles, tokens, hidden) float32, tiles <= max_batch."""
        ...


class OrtVision:
    def __init__(self, path: Path, providers: list[str], max_batch: int, device: str = "cpu") -> None:
        self.session = make_session(path, providers, device)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.max_batch = max_batch

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, self.session.run([self.output], {self.input: np.ascontiguousarray(pixel_values,
                                                                                             np.float32)})[0])


class OrtDecoder:
    """One decoder ONNX session; ``forward`` keeps the presents as OrtValues on the session's device."""

    def __init__(self, path: Path, providers: list[str], device: str = "cpu") -> None:
        self.session = make_session(path, providers, device)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = self.input_names[3:]
        first_past = self.session.get_inputs()[3]
        self.kv_heads, self.head_dim = int(first_past.shape[1]), int(first_past.shape[3])
        self.on_cuda = providers[0] == "CUDAExecutionProvider"
        self.device_type = "cuda" if self.on_cuda else "cpu"
        self.device_id = _device_id(device) if self.on_cuda else 0

    def forward(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                past: list | None) -> tuple[np.ndarray, list]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, np.int64))
        if past is None:
            empty = np.zeros((embeds.shape[0], self.kv_heads, 0, self.head_dim), np.float32)
            for name in self.past_names:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(self.past_names, past, strict=True):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.output_names[1:]:
            # Presents stay where they were computed: no device->host copy of the cache per token.
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])


def greedy_tokens(decoder: OrtDecoder, embeds: np.ndarray, mask: np.ndarray, table: np.ndarray,
                  new_tokens: int) -> tuple[list[int], np.ndarray]:
    """A bare greedy loop for one row (used to measure quantisation), returning tokens and first logits."""
    positions = upstream_position_ids(mask)
    logits, past = decoder.forward(embeds, mask, positions, None)
    first, tokens = logits[0].copy(), []
    for _ in range(new_tokens):
        nxt = int(logits[0].argmax())
        tokens.append(nxt)
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        logits, past = decoder.forward(table[np.array([[nxt]])], mask, positions, past)
    return tokens, first


class ExportedSession:
    """A DecoderSession over the exported graphs (the shared generation loop drives it)."""

    def __init__(self, backend: ExportedBackend, input_ids: np.ndarray, attention_mask: np.ndarray,
                 pixel_values: np.ndarray | None) -> None:
        self.backend = backend
        self.input_ids = np.asarray(input_ids, dtype=np.int64)
        self.mask = np.asarray(attention_mask, dtype=np.int64)
        self.pixel_values = pixel_values
        self.past: list | None = None
        self.positions: np.ndarray | None = None

    def prefill(self) -> np.ndarray:
        embeds = self.backend.embed_prompt(self.input_ids, self.pixel_values)
        self.positions = upstream_position_ids(self.mask)
        logits, self.past = self.backend.decoder.forward(embeds, self.mask, self.positions, None)
        return logits.astype(np.float32, copy=False)

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(next_ids, dtype=np.int64)[:, None]
        self.mask = np.concatenate([self.mask, np.ones((self.mask.shape[0], 1), np.int64)], axis=1)
        assert self.positions is not None, "prefill() first"
        self.positions = self.positions[:, -1:] + 1
        logits, self.past = self.backend.decoder.forward(self.backend.embedding[ids], self.mask, self.positions,
                                                         self.past)
        return logits.astype(np.float32, copy=False)


class ExportedBackend:
    """Shared by ``onnx`` and ``trt``: they differ only in the vision runner."""

    def __init__(self, name: str, spec: ModelSpec, vision: VisionRunner, decoder: OrtDecoder,
                 embedding: np.ndarray, tile_range: tuple[int, int]) -> None:
        self.name = name
        self.spec = spec
        self.vision = vision
        self.decoder = decoder
        self.embedding = embedding
        self.tile_range = tile_range

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """Run the tiles in chunks of the profile's maximum (a batch concatenates several images)."""
        pv = np.ascontiguousarray(pixel_values, dtype=np.float32)
        chunks = [self.vision.run(pv[i:i + self.vision.max_batch]) for i in range(0, pv.shape[0],
                                                                                 self.vision.max_batch)]
        return np.concatenate(chunks)

    def _check_tiles(self, input_ids: np.ndarray) -> None:
        low, high = self.tile_range
        per_row = (input_ids == self.spec.image_token_id).sum(axis=1) // self.spec.tokens_per_tile
        for row, tiles in enumerate(per_row.tolist()):
            if tiles and not low <= tiles <= high:
                raise TileCountError(
                    f"row {row}: the image has {tiles} tiles but the vision engine's profile allows {low}..{high} "
                    f"(max_tiles {high - 1} + thumbnail); ask with max_tiles <= {high - 1} or rebuild the engines "
                    f"with --max-tiles {tiles - 1}")

    def embed_prompt(self, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
        embeds = self.embedding[input_ids].astype(np.float32)  # fancy indexing copies out of the memory map
        slots = input_ids == self.spec.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise OptionError(f"the prompt has {n_slots} image-context tokens but no image was given")
            return embeds
        self._check_tiles(input_ids)
        features = self.image_features(pixel_values)
        features = features.reshape(-1, features.shape[-1])
        if features.shape[0] != n_slots:
            raise OptionError(f"image features ({features.shape[0]} tokens) do not match the prompt's "
                              f"{n_slots} image-context tokens")
        # Boolean-mask assignment fills row-major: row, then position, the order of torch's masked_scatter.
        embeds[slots] = features
        return embeds

    def session(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                pixel_values: np.ndarray | None) -> ExportedSession:
        return ExportedSession(self, input_ids, attention_mask, pixel_values)
