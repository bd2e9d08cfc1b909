"""Greedy decoding on the device: the state of one batch and the step that advances it.

The step does what ``generation.generate`` does for greedy decoding (mask the stop token before
``min_new_tokens``, argmax, pad finished rows, record the token, mark rows that stopped) with every
quantity a device tensor, so a whole step is one CUDA graph and the host reads nothing per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import torch

from ivl_ros.model.backends.static_lm import KVCache, StaticLM

if TYPE_CHECKING:
    from ivl_ros.model.backends.triton_decode import FusedDecoder

T = TypeVar("T")


@dataclass
class GreedyState:
    """Everything one decode step reads and writes, at fixed addresses (batch B, cache length L)."""

    cache: KVCache
    ids: torch.Tensor  # (B,) the token fed next
    positions: torch.Tensor  # (B,) its RoPE position
    slot: torch.Tensor  # (1,) its cache column
    step: torch.Tensor  # (1,) index of the token being chosen
    finished: torch.Tensor  # (B,) bool
    out: torch.Tensor  # (B, L) chosen tokens
    min_new: torch.Tensor  # (1,)
    eos: torch.Tensor  # (1,)
    pad: torch.Tensor  # (1,)
    eos_mask: torch.Tensor  # (1, V) bool, True at the stop token
    graph: torch.cuda.CUDAGraph | None = None
    mode: str = "eager"
    # The fused Triton decode step for this state, when the backend uses it.
    fused: FusedDecoder | None = None
    # Captured prefills of this state's cache, keyed by (prompt length, no padding): see torch_fast.
    prefills: dict = field(default_factory=dict)

    @classmethod
    def allocate(
        cls, lm: StaticLM, batch: int, length: int, device: torch.device, dtype: torch.dtype, vocab: int
    ) -> GreedyState:
        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, device=device, dtype=torch.long)

        return cls(
            lm.new_cache(batch, length, device, dtype),
            longs(batch),
            longs(batch),
            longs(1),
            longs(1),
            torch.zeros(batch, device=device, dtype=torch.bool),
            longs(batch, length),
            longs(1),
            longs(1),
            longs(1),
            torch.zeros((1, vocab), device=device, dtype=torch.bool),
        )

    @property
    def batch(self) -> int:
        return int(self.ids.shape[0])

    def reset(self, min_new: int, eos: int, pad: int) -> None:
        self.min_new.fill_(min_new)
        self.eos.fill_(eos)
        self.pad.fill_(pad)
        self.eos_mask.zero_()
        self.eos_mask[0, eos] = True
        self.finished.zero_()
        self.step.zero_()


def choose(logits: torch.Tensor, st: GreedyState) -> None:
    """Pick the token for step ``st.step`` from logits (B, V) and record it; no host sync."""
    scores = logits.float().masked_fill(st.eos_mask & (st.step < st.min_new)[:, None], float("-inf"))
    nxt = torch.where(st.finished, st.pad, scores.argmax(dim=-1))
    st.out[:, st.step] = nxt[:, None]
    st.finished |= nxt == st.eos
    st.ids.copy_(nxt)
    st.step += 1


def greedy_step(lm: StaticLM, st: GreedyState) -> None:
    """Feed ``st.ids``, choose the next token, advance position and slot."""
    logits = lm.decode(st.ids, st.positions, st.slot, st.cache)
    choose(logits, st)
    st.positions += 1
    st.slot += 1


def capture(step: Callable[[], T], warmup: int = 3, pool=None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Warm ``step`` up on a side stream (compilation, autotuning, allocator) and capture one call.

    Returns the graph and what the captured call returned (its output tensors live in the graph's pool).
    The warm-up and the capture advance any state ``step`` changes; the caller resets it before real use.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = step()
    torch.cuda.synchronize()
    return graph, out
