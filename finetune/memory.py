"""How much goes into one forward pass, and which layers recompute their activations, from measured memory.

The trainer measures, on the GPU, the peak memory of one forward + backward of a real micro-batch twice: with
no layer checkpointed and with every LLM layer checkpointed (``probe``). Per token, the activation memory of
``c`` checkpointed layers out of ``L`` is taken as the straight line between the two. ``choose_plan`` then picks
the fewest checkpointed layers with which one micro-batch of the longest possible samples fits in the free
memory (recompute costs time), and, with that many, the most micro-batches of a step per forward pass (fewer,
larger matrix products). Micro-batches are split evenly over the forwards of a step, so every step, on every
rank, runs the same number of forwards (DDP synchronises on the last one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class ForwardPlan:
    micro_batches_per_forward: int
    checkpointed_layers: int
    note: str = ""

    def describe(self, layers: int, per_device: int) -> str:
        k = self.micro_batches_per_forward
        text = (
            f"{k} micro-batch{'es' if k > 1 else ''} ({k * per_device} samples) per forward pass, activation "
            f"checkpointing on {self.checkpointed_layers} of {layers} LLM layers"
        )
        return f"{text} ({self.note})" if self.note else text


def even_split(total: int, most: int) -> int:
    """The per-forward count that splits ``total`` micro-batches into the fewest forwards of at most ``most``,
    as evenly as possible (4 with at most 3 -> 2 + 2, not 3 + 1)."""
    most = max(1, min(most, total))
    forwards = math.ceil(total / most)
    return math.ceil(total / forwards)


def choose_plan(
    available: float,
    per_token_full: float,
    per_token_checkpointed: float,
    fixed: float,
    layers: int,
    tokens_per_micro: int,
    micro_per_step: int,
    checkpointed: int | None = None,
) -> ForwardPlan:
    """Fewest checkpointed layers that fit one micro-batch of ``tokens_per_micro`` tokens (or ``checkpointed``
    when it is forced), then the most micro-batches per forward that still fit with that many.

    ``per_token_*``: measured activation bytes per token with none / all of the ``layers`` checkpointed (only
    the one a forced count uses needs to be finite); ``fixed``: bytes that do not grow with the tokens
    (gradients of the trainable weights).
    """
    if checkpointed == 0:
        per_token_checkpointed = per_token_full
    elif checkpointed == layers:
        per_token_full = per_token_checkpointed
    saved_per_layer = max(0.0, per_token_full - per_token_checkpointed) / max(1, layers)

    def need(k: int, c: int) -> float:
        return fixed + k * tokens_per_micro * (per_token_full - c * saved_per_layer)

    candidates = range(layers + 1) if checkpointed is None else [checkpointed]
    for c in candidates:
        if need(1, c) <= available:
            break
    else:
        c = candidates[-1]
        return ForwardPlan(
            1,
            c,
            f"one micro-batch of up to {tokens_per_micro} tokens may not fit: "
            f"{need(1, c) / GIB:.1f} GiB needed, {available / GIB:.1f} GiB free",
        )
    k = 1
    while k < micro_per_step and need(k + 1, c) <= available:
        k += 1
    k = even_split(micro_per_step, k)
    return ForwardPlan(k, c, f"{need(k, c) / GIB:.1f} GiB of {available / GIB:.1f} GiB free planned")
