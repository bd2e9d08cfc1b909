"""One generation loop for every backend, with upstream/transformers ``generate`` semantics.

A backend provides a :class:`DecoderSession`: ``prefill`` returns the last-position logits of a
(left-padded) batch, ``step`` feeds one token per row and returns the next logits. The loop applies
``min_new_tokens`` (the stop token is masked until then, as transformers does), greedy argmax or
temperature/top-k/top-p sampling, stops rows on the stop token and pads finished rows.
Logits arrive as float32 numpy arrays so that the loop needs no torch (the ONNX path).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from ivl_ros.errors import OptionError
from ivl_ros.model.options import (
    ASK_MAX_NEW_TOKENS,
    CAPTION_MAX_NEW_TOKENS,
    CAPTION_MIN_NEW_TOKENS,
    SEED_MAX,
    TOP_K_DEFAULT,
)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding options (upstream chat() passes these to generate())."""

    max_new_tokens: int = ASK_MAX_NEW_TOKENS
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = TOP_K_DEFAULT
    seed: int | None = None

    def validated(self) -> GenerationSettings:
        """Self, or an OptionError naming the first setting of the wrong type or out of its range."""
        for name in ("max_new_tokens", "min_new_tokens", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise OptionError(f"{name} must be an integer, got {value!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
                raise OptionError(f"{name} must be a finite number, got {value!r}")
        if self.max_new_tokens < 1:
            raise OptionError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise OptionError(
                f"min_new_tokens must be in 0..max_new_tokens ({self.max_new_tokens}), got {self.min_new_tokens}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or not 0 <= self.seed <= SEED_MAX
        ):
            raise OptionError(f"seed must be an integer in 0..{SEED_MAX}, got {self.seed!r}")
        if self.do_sample:
            if self.temperature <= 0:
                raise OptionError(f"temperature must be > 0 when sampling, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise OptionError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise OptionError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        return self

    def with_(self, **changes) -> GenerationSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Upstream caption evaluation: greedy, 8..30 new tokens (the numbers live in ivl_ros.model.options).
CAPTION_SETTINGS = GenerationSettings(max_new_tokens=CAPTION_MAX_NEW_TOKENS, min_new_tokens=CAPTION_MIN_NEW_TOKENS)


class DecoderSession(Protocol):
    def prefill(self) -> np.ndarray:
        """Run the prompt; return float32 logits of the last position, shape (batch, vocab)."""
        ...

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        """Append one token per row (shape (batch,)); return the next logits (batch, vocab)."""
        ...

    # Optional: ``generate(settings, eos_id, pad_id) -> list[list[int]]`` with exactly :func:`generate`'s
    # result, for sessions that decode on their device; the engine uses it when no streaming is asked.


def upstream_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions as upstream generate() derives them from a (left-padded) mask: cumsum - 1, padding set to 1.

    Every backend's prefill uses this one rule (torch sessions convert the result to a tensor)."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, positions).astype(np.int64)


def cut_at_stop(tokens: np.ndarray, eos_id: int) -> list[int]:
    """A row of generated ids up to and including the first stop token (all of it if none)."""
    hits = np.flatnonzero(tokens == eos_id)
    end = int(hits[0]) + 1 if hits.size else len(tokens)
    return [int(t) for t in tokens[:end]]


def _sample(scores: np.ndarray, settings: GenerationSettings, rng: np.random.Generator) -> np.ndarray:
    scores = scores / settings.temperature
    if settings.top_k:
        k = min(settings.top_k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if settings.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= settings.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


def generate(
    session: DecoderSession,
    batch_size: int,
    settings: GenerationSettings,
    eos_id: int,
    pad_id: int,
    on_step: Callable[[list[list[int]]], None] | None = None,
) -> list[list[int]]:
    """Generate new token ids per row; a row's list ends with ``eos_id`` when it stopped on it."""
    settings = settings.validated()
    rng = np.random.default_rng(settings.seed)
    outputs: list[list[int]] = [[] for _ in range(batch_size)]
    finished = np.zeros(batch_size, dtype=bool)
    logits = session.prefill()
    for step in range(settings.max_new_tokens):
        scores = np.array(logits, dtype=np.float32, copy=True)
        if step < settings.min_new_tokens:
            scores[:, eos_id] = -np.inf
        next_ids = _sample(scores, settings, rng) if settings.do_sample else scores.argmax(axis=-1)
        next_ids = np.where(finished, pad_id, next_ids).astype(np.int64)
        for row in np.flatnonzero(~finished):
            outputs[row].append(int(next_ids[row]))
        finished |= next_ids == eos_id
        if on_step is not None:
            on_step(outputs)
        if finished.all() or step == settings.max_new_tokens - 1:
            break
        logits = session.step(next_ids)
    return outputs
