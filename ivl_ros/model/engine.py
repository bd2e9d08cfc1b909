"""VisionLanguageEngine: the one entry point every front end uses (CLI, ROS node, eval, bench).

It reproduces upstream ``chat()`` / ``batch_chat()``: tiling, the internlm2-chat prompt with
``<image>`` expansion, greedy (or sampled) generation stopping on ``<|im_end|>``, and the
decode/cut/strip of the response. The backend only runs the network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ivl_ros.errors import OptionError
from ivl_ros.model.backends import Backend, check_backend_name
from ivl_ros.model.generation import CAPTION_SETTINGS, GenerationSettings, generate
from ivl_ros.model.images import ImageInput, load_image
from ivl_ros.model.options import CAPTION_MAX_TILES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_QUESTION_TOKENS, MAX_TILES_LIMIT
from ivl_ros.model.prompt import CAPTION_PROMPT, IM_END, chat_prompt, check_text, cut_response
from ivl_ros.model.spec import ModelSpec
from ivl_ros.model.tiling import pixel_values_for
from ivl_ros.model.tokenizer import InternLM2Tokenizer

__all__ = [
    "Answer",
    "CAPTION_PROMPT",
    "CAPTION_SETTINGS",
    "GenerationSettings",
    "PreparedPrompt",
    "VisionLanguageEngine",
    "collate_prompts",
]


@dataclass
class PreparedPrompt:
    """One request after tiling and prompting, before the model runs."""

    question: str  # as sent (with "<image>\n" prepended when upstream does)
    prompt_ids: list[int]
    pixel_values: np.ndarray | None  # (tiles, 3, S, S) float32 (a torch tensor on the device with device tiling)
    num_tiles: int
    history: tuple[tuple[str, str], ...] = ()


@dataclass
class Answer:
    answer: str
    token_ids: list[int]
    prompt_ids: list[int]
    num_tiles: int
    latency_ms: float
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "answer": self.answer,
            "token_ids": self.token_ids,
            "prompt_ids": self.prompt_ids,
            "num_tiles": self.num_tiles,
            "latency_ms": self.latency_ms,
        }


def _concat_tiles(tiles: list):
    """Stack the rows' tiles: numpy arrays from the CPU tiler, torch tensors from a device tiler."""
    if len(tiles) == 1:
        return tiles[0]
    if isinstance(tiles[0], np.ndarray):
        return np.concatenate(tiles)
    import torch  # only device tilers hand out tensors; the torch-free (onnx) path never gets here

    return torch.cat(tiles)


def collate_prompts(prepared: Sequence[PreparedPrompt], pad_id: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """The batch a backend session takes, as upstream ``batch_chat()`` builds it: prompt ids left-padded with
    ``pad_id`` (attention mask 0 there), and every row's tiles concatenated in row order (a numpy array, or a torch
    tensor from a device tiler; None: no images)."""
    longest = max(len(p.prompt_ids) for p in prepared)
    ids = np.full((len(prepared), longest), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, p in enumerate(prepared):
        ids[row, longest - len(p.prompt_ids) :] = p.prompt_ids
        mask[row, longest - len(p.prompt_ids) :] = 1
    tiles = [p.pixel_values for p in prepared if p.pixel_values is not None]
    return ids, mask, (_concat_tiles(tiles) if tiles else None)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class VisionLanguageEngine:
    """Thread-safe: one request runs at a time (an internal lock).

    Limits, checked before any model work: images over ``max_pixels`` (width * height; files from their header),
    request text (question + history) over ``max_question_tokens`` tokens (megabytes are refused by their length
    in characters without being tokenized) and whole prompts over the model's context.
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: InternLM2Tokenizer,
        spec: ModelSpec,
        model_id: str,
        *,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.spec = spec
        self.model_id = model_id
        self.eos_id = tokenizer.token_to_id(IM_END)
        self.max_question_tokens = _positive_int(max_question_tokens, "max_question_tokens")
        self.max_pixels = _positive_int(max_pixels, "max_pixels")
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_path: str | Path,
        backend: str = "torch",
        device: str = "cpu",
        dtype: str = "float32",
        engines_path: str | Path | None = None,
        attention: str | None = None,
        fast: bool | None = None,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> VisionLanguageEngine:
        """Load a checkpoint (upstream or converted layout) with the named backend.

        ``fast`` (torch only): the static-cache, CUDA-graph path of :mod:`backends.torch_fast`; by default
        on for CUDA devices and off on CPU. Both give the same tokens.
        """
        check_backend_name(backend)
        path = Path(model_path)
        limits = {"max_question_tokens": max_question_tokens, "max_pixels": max_pixels}
        if backend == "torch":
            from ivl_ros.model.backends.torch_backend import TorchBackend
            from ivl_ros.model.checkpoint import load_model

            loaded = load_model(path, device=device, dtype=dtype, attention=attention)
            if fast is None:
                fast = loaded.model.device.type == "cuda"
            if fast:
                from ivl_ros.model.backends.torch_fast import FastTorchBackend

                return cls(
                    FastTorchBackend(loaded), loaded.tokenizer, loaded.spec, model_id=path.resolve().name, **limits
                )
            return cls(TorchBackend(loaded), loaded.tokenizer, loaded.spec, model_id=path.resolve().name, **limits)
        try:
            from ivl_ros.model.backends.exported import load_exported_backend
        except ImportError:
            raise OptionError(
                f"backend {backend!r} needs exported engines (export/build_engines.py); "
                "this installation has no exported-backend support yet"
            ) from None
        exported, tokenizer, spec = load_exported_backend(backend, path, engines_path, device=device)
        return cls(exported, tokenizer, spec, model_id=path.resolve().name, **limits)

    # -- preparation ---------------------------------------------------------------------------------
    def _max_tiles(self, max_tiles: int | None) -> int:
        value = self.spec.max_dynamic_patch if max_tiles is None else max_tiles
        if not 1 <= value <= MAX_TILES_LIMIT:
            raise OptionError(f"max_tiles must be in 1..{MAX_TILES_LIMIT}, got {value}")
        return value

    def check_prompt_length(
        self, question: str, history: Sequence[tuple[str, str]] = (), max_tokens: int | None = None
    ) -> int:
        """The prompt-length rule: the text a request adds (``question`` and every ``history`` turn) must be
        valid UTF-8 text of at most ``max_tokens`` tokens (default: this engine's ``max_question_tokens``).

        Returns the token count; raises OptionError otherwise. Text longer than ``max_tokens`` times the longest
        token (in characters) is refused without being tokenized, so a megabyte question costs microseconds.
        Front ends with their own limit (the node's ``max_question_tokens`` parameter) pass it as ``max_tokens``.
        """
        limit = self.max_question_tokens if max_tokens is None else _positive_int(max_tokens, "max_tokens")
        texts = [check_text(question)]
        for turn, pair in enumerate(history):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise OptionError(f"history turn {turn} must be a (question, answer) pair, got {pair!r:.60}")
            texts += [
                check_text(pair[0], f"history turn {turn} question"),
                check_text(pair[1], f"history turn {turn} answer"),
            ]
        chars = sum(len(t) for t in texts)
        if chars > limit * self.tokenizer.max_piece_chars:
            raise OptionError(
                f"the question is {chars} characters, more than {limit} tokens can hold; the limit is "
                f"max_question_tokens={limit}"
            )
        tokens = sum(len(self.tokenizer.encode(t, add_bos=False)) for t in texts)
        if tokens > limit:
            raise OptionError(f"the question is {tokens} tokens; the limit is max_question_tokens={limit}")
        return tokens

    def prepare(
        self,
        image: ImageInput | None,
        question: str,
        max_tiles: int | None = None,
        history: Sequence[tuple[str, str]] = (),
    ) -> PreparedPrompt:
        if isinstance(question, str) and not question.strip():
            raise OptionError("the question is empty")
        self.check_prompt_length(question, history)
        pixel_values = None
        num_tiles = 0
        if image is not None:
            pil = load_image(image, max_pixels=self.max_pixels)
            # A backend may tile on its own device (same values as the CPU tiler, see backends/device_tiling).
            tiler = getattr(self.backend, "pixel_values_for", pixel_values_for)
            pixel_values = tiler(pil, self.spec.tile_size, self._max_tiles(max_tiles), self.spec.use_thumbnail)
            num_tiles = int(pixel_values.shape[0])
        sent, prompt = chat_prompt(
            question,
            num_tiles if image is not None else None,
            self.spec.tokens_per_tile,
            history,
            self.spec.system_message,
            self.spec.template,
        )
        prepared = PreparedPrompt(sent, self.tokenizer.encode(prompt), pixel_values, num_tiles, tuple(history))
        self._check_context(prepared)
        return prepared

    def _check_context(self, p: PreparedPrompt) -> None:
        if len(p.prompt_ids) > self.spec.context_length:
            raise OptionError(
                f"the prompt is {len(p.prompt_ids)} tokens ({p.num_tiles} tiles), over the model's "
                f"context of {self.spec.context_length} tokens; ask with fewer tiles or less text"
            )

    def check_prepared(self, p: PreparedPrompt, row: int = 0) -> None:
        """The engine boundary: a prompt's pixel values must be (num_tiles, 3, S, S) float32 for this model's
        S-pixel tiles, with exactly num_tiles * tokens_per_tile image-context tokens in the prompt."""
        slots = sum(1 for t in p.prompt_ids if t == self.spec.image_token_id)
        where = f"request {row}"
        if p.pixel_values is None:
            if slots:
                raise OptionError(f"{where}: the prompt has {slots} image-context tokens but no pixel values")
            return
        pv = p.pixel_values
        s = self.spec.tile_size
        expected = (p.num_tiles, 3, s, s)
        # A numpy array from the CPU tiler, or a torch tensor from a backend's device tiler: same shape and dtype.
        if not (isinstance(pv, np.ndarray) or type(pv).__name__ == "Tensor"):
            raise OptionError(f"{where}: pixel values must be an array of shape {expected}, got {type(pv).__name__}")
        if tuple(pv.shape) != expected or str(pv.dtype).removeprefix("torch.") != "float32":
            raise OptionError(
                f"{where}: pixel values have shape {tuple(pv.shape)} and dtype {pv.dtype}; expected "
                f"shape {expected} (num_tiles={p.num_tiles}, channels, tile_size, tile_size) float32"
            )
        if slots != p.num_tiles * self.spec.tokens_per_tile:
            raise OptionError(
                f"{where}: the prompt has {slots} image-context tokens; {p.num_tiles} tiles need "
                f"{p.num_tiles} * {self.spec.tokens_per_tile} = "
                f"{p.num_tiles * self.spec.tokens_per_tile}"
            )
        self._check_context(p)

    # -- running -------------------------------------------------------------------------------------
    def run(
        self,
        prepared: Sequence[PreparedPrompt],
        settings: GenerationSettings,
        on_text: Callable[[str], None] | None = None,
    ) -> list[Answer]:
        """Generate for a batch of prepared prompts (left padding); each row equals its single run."""
        if not prepared:
            return []
        if on_text is not None and len(prepared) != 1:
            raise OptionError("streaming (on_text) works on one request at a time")
        settings = settings.validated()
        for row, p in enumerate(prepared):
            self.check_prepared(p, row)
        ids, mask, pixel_values = collate_prompts(prepared, self.tokenizer.pad_id)

        on_step: Callable[[list[list[int]]], None] | None = None
        if on_text is not None:

            def stream_text(outputs: list[list[int]]) -> None:
                on_text(cut_response(self.tokenizer.decode(outputs[0])))

            on_step = stream_text

        with self._lock:
            start = time.perf_counter()
            session = self.backend.session(ids, mask, pixel_values)
            # A session may decode on its own device (no host round trip per token); streaming needs the loop.
            device_generate = getattr(session, "generate", None)
            if device_generate is not None and on_step is None:
                outputs = device_generate(settings, self.eos_id, self.tokenizer.pad_id)
            else:
                outputs = generate(session, len(prepared), settings, self.eos_id, self.tokenizer.pad_id, on_step)
            latency_ms = (time.perf_counter() - start) * 1000.0
        answers = []
        for p, out in zip(prepared, outputs, strict=True):
            text = cut_response(self.tokenizer.decode(out))
            answers.append(
                Answer(text, out, p.prompt_ids, p.num_tiles, latency_ms, p.question, [*p.history, (p.question, text)])
            )
        return answers

    def ask(
        self,
        image: ImageInput | None,
        question: str,
        *,
        max_tiles: int | None = None,
        settings: GenerationSettings | None = None,
        history: Sequence[tuple[str, str]] = (),
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer ``question`` about ``image`` (or text only), like upstream ``chat()``."""
        prepared = self.prepare(image, question, max_tiles, history)
        return self.run([prepared], settings or GenerationSettings(), on_text)[0]

    def ask_batch(
        self,
        images: Sequence[ImageInput | None],
        questions: Sequence[str],
        *,
        max_tiles: int | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[Answer]:
        """Several (image, question) pairs in one model call, like upstream ``batch_chat()``."""
        if len(images) != len(questions):
            raise OptionError(f"{len(images)} images but {len(questions)} questions")
        prepared = [self.prepare(img, q, max_tiles) for img, q in zip(images, questions, strict=True)]
        return self.run(prepared, settings or GenerationSettings())

    def caption(
        self,
        image: ImageInput,
        *,
        max_tiles: int | None = CAPTION_MAX_TILES,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """A one-sentence caption with upstream's caption-eval prompt and settings."""
        return self.ask(
            image, prompt or CAPTION_PROMPT, max_tiles=max_tiles, settings=settings or CAPTION_SETTINGS, on_text=on_text
        )

    def caption_batch(
        self,
        images: Sequence[ImageInput],
        *,
        max_tiles: int | None = CAPTION_MAX_TILES,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[Answer]:
        return self.ask_batch(
            images, [prompt or CAPTION_PROMPT] * len(images), max_tiles=max_tiles, settings=settings or CAPTION_SETTINGS
        )
