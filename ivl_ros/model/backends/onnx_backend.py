"""The ``onnx`` backend: vision and decoder graphs in ONNX Runtime, embeddings in numpy. Imports no torch.

Semantics match the torch backend: token embeddings from the exported table, image features spliced
in order into the ``<IMG_CONTEXT>`` positions, upstream position ids (cumsum(mask) - 1, padding 1),
a KV cache carried between steps. Two decoder graphs exist (``export/build_engines.py --precision``):

* the traced fp32 graph (:class:`OrtDecoder`): dynamic KV cache as inputs/outputs, kept on the device
  with I/O binding; the CPU export;
* the fused fp16/bf16 graph (:mod:`ort_fused`): a static KV cache updated in place, greedy choice on the
  device, CUDA graphs; the GPU export.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from ivl_ros.errors import OptionError
from ivl_ros.model.backends.engines import EngineError, TileCountError
from ivl_ros.model.generation import upstream_position_ids
from ivl_ros.model.spec import ModelSpec
from ivl_ros.model.splice import splice_image_features

if TYPE_CHECKING:
    from onnxruntime import OrtValue

log = logging.getLogger(__name__)


def ort_providers(device: str) -> list[str]:
    """ORT execution providers for ``device`` (cpu, cuda, cuda:N); refuses CUDA when ORT cannot use it."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(
                f"device {device!r}: this onnxruntime ({ort.__version__}) has no CUDA provider; "
                "install onnxruntime-gpu instead of onnxruntime"
            )
        _preload_cuda_libraries(ort)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise OptionError(f"device {device!r} is not one of ('cpu', 'cuda', 'cuda:N')")


_PRELOADED: list[bool] = []


def _preload_cuda_libraries(ort) -> None:
    """CUDA/cuDNN from the nvidia-* wheels when they are installed (nothing to do with system CUDA or JetPack)."""
    if not _PRELOADED and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    _PRELOADED.append(True)


def device_id(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def make_session(
    path: Path, providers: list[str], device: str = "cpu", cuda_graph: bool = False, cpu_fallback: bool = True
):
    """An InferenceSession with the runtime's options.

    ``cuda_graph``: the CUDA provider captures runs that name a ``gpu_graph_id`` and replays them (inputs
    and outputs must then be bound at fixed device addresses). ``cpu_fallback=False`` makes the session
    refuse a graph whose nodes are not all on the first provider (diagnostics: a node on the CPU costs a
    copy each way and rules CUDA graphs out).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # keep ORT's per-node placement warnings out of user output
    provider_list: list = list(providers)
    if not cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        provider_list = [p for p in provider_list if p != "CPUExecutionProvider"]  # ORT refuses both at once
    if providers[0] == "CUDAExecutionProvider":
        # TF32 off: fp32 graphs then compute in fp32 as torch does by default, which greedy parity relies on.
        cuda_options = {"device_id": device_id(device), "use_tf32": 0}
        if cuda_graph:
            cuda_options["enable_cuda_graph"] = 1
        provider_list = [("CUDAExecutionProvider", cuda_options), *provider_list[1:]]
    return ort.InferenceSession(str(path), sess_options=options, providers=provider_list)


def is_device_array(value: object) -> bool:
    """A framework tensor that may live on a GPU (DLPack), as opposed to a numpy array in host memory."""
    return hasattr(value, "__dlpack__") and not isinstance(value, np.ndarray)


class VisionRunner(Protocol):
    max_batch: int

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """(tiles, 3, S, S) float32 -> (tiles, tokens, hidden) float32 or float16, tiles <= max_batch."""
        ...


class DeviceVisionRunner(VisionRunner, Protocol):
    def run_on_device(self, pixel_values: object) -> OrtValue:
        """Tiles already on the device (a DLPack tensor) -> features as an OrtValue on that device."""
        ...


class OrtVision:
    def __init__(self, path: Path, providers: list[str], max_batch: int, device: str = "cpu") -> None:
        self.session = make_session(path, providers, device)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.max_batch = max_batch
        self.device_type = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.device_id = device_id(device)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        return cast(
            np.ndarray, self.session.run([self.output], {self.input: np.ascontiguousarray(pixel_values, np.float32)})[0]
        )

    def run_on_device(self, pixel_values: object) -> OrtValue:
        """Tiles already on the device (any DLPack tensor, e.g. torch CUDA) -> features as an OrtValue that
        stays there: no host copy either way (what a GPU pipeline and the benchmark's vision timing need)."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input, ort.OrtValue.from_dlpack(pixel_values))
        binding.bind_output(self.output, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]


class OrtDecoder:
    """The traced decoder; ``forward`` keeps the presents as OrtValues on the session's device."""

    fused = False

    def __init__(self, path: Path, providers: list[str], device: str = "cpu") -> None:
        self.session = make_session(path, providers, device)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = self.input_names[3:]
        first_past = self.session.get_inputs()[3]
        self.kv_heads, self.head_dim = int(first_past.shape[1]), int(first_past.shape[3])
        self.on_cuda = providers[0] == "CUDAExecutionProvider"
        self.device_type = "cuda" if self.on_cuda else "cpu"
        self.device_id = device_id(device) if self.on_cuda else 0

    def forward(
        self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None
    ) -> tuple[np.ndarray, list]:
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

    def greedy(self, embeds: np.ndarray, table: np.ndarray, new_tokens: int) -> tuple[list[int], np.ndarray]:
        """A bare greedy loop for one unpadded row (quantisation measurements): tokens and first logits."""
        mask = np.ones(embeds.shape[:2], np.int64)
        positions = upstream_position_ids(mask)
        logits, past = self.forward(embeds, mask, positions, None)
        first, tokens = logits[0].copy(), []
        for _ in range(new_tokens):
            nxt = int(logits[0].argmax())
            tokens.append(nxt)
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            logits, past = self.forward(table[np.array([[nxt]])], mask, positions, past)
        return tokens, first


class ExportedSession:
    """A DecoderSession over the traced decoder (the shared generation loop drives it)."""

    def __init__(
        self,
        backend: ExportedBackend,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        pixel_values: np.ndarray | None,
    ) -> None:
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
        logits, self.past = self.backend.decoder.forward(
            self.backend.embedding[ids], self.mask, self.positions, self.past
        )
        return logits.astype(np.float32, copy=False)


class ExportedBackend:
    """Shared by ``onnx`` and ``trt``: they differ only in the vision runner."""

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        vision: VisionRunner,
        decoder,
        embedding: np.ndarray,
        tile_range: tuple[int, int],
    ) -> None:
        self.name = name
        self.spec = spec
        self.vision = vision
        self.decoder = decoder
        self.embedding = embedding
        self.tile_range = tile_range

    def image_features(self, pixel_values):
        """Run the tiles in chunks of the profile's maximum (a batch concatenates several images).

        Host arrays give host features; tiles already on a GPU (a DLPack tensor) give an OrtValue on it."""
        if is_device_array(pixel_values) and hasattr(self.vision, "run_on_device"):
            if int(pixel_values.shape[0]) > self.vision.max_batch:
                raise TileCountError(
                    f"{pixel_values.shape[0]} tiles on the device exceed the vision profile's {self.vision.max_batch}"
                )
            return cast(DeviceVisionRunner, self.vision).run_on_device(pixel_values)  # it has one: hasattr above
        pv = np.ascontiguousarray(pixel_values, dtype=np.float32)
        chunks = [
            self.vision.run(pv[i : i + self.vision.max_batch]) for i in range(0, pv.shape[0], self.vision.max_batch)
        ]
        return np.concatenate(chunks)

    def _check_tiles(self, input_ids: np.ndarray) -> None:
        low, high = self.tile_range
        per_row = (input_ids == self.spec.image_token_id).sum(axis=1) // self.spec.tokens_per_tile
        for row, tiles in enumerate(per_row.tolist()):
            if tiles and not low <= tiles <= high:
                raise TileCountError(
                    f"row {row}: the image has {tiles} tiles but the vision engine's profile allows {low}..{high} "
                    f"(max_tiles {high - 1} + thumbnail); ask with max_tiles <= {high - 1} or rebuild the engines "
                    f"with --max-tiles {tiles - 1}"
                )

    def embed_prompt(self, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
        # Fancy indexing copies the rows out of the memory map; no second copy when the table is float32 already.
        embeds = np.asarray(self.embedding[input_ids], dtype=np.float32)

        def features(pv: np.ndarray) -> np.ndarray:
            self._check_tiles(input_ids)
            return cast(np.ndarray, self.image_features(pv))  # host tiles give host features

        return splice_image_features(embeds, input_ids, self.spec.image_token_id, pixel_values, features)

    def session(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None):
        if self.decoder.fused:
            from ivl_ros.model.backends.ort_fused import FusedSession

            return FusedSession(self, input_ids, attention_mask, pixel_values)
        return ExportedSession(self, input_ids, attention_mask, pixel_values)


def cuda_graphs_wanted() -> bool:
    """CUDA graphs for the fused decoder unless IVL_ORT_CUDA_GRAPH=0 (to compare, or where capture fails)."""
    return os.environ.get("IVL_ORT_CUDA_GRAPH", "1") != "0"
