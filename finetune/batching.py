"""Length-grouped sample order, per-rank micro-batches and the padding collator."""

from __future__ import annotations

import numpy as np
import torch

from finetune.preprocess import IGNORE_INDEX, Example


def length_grouped_order(lengths: list[int], group_size: int, seed: int) -> list[int]:
    """transformers' LengthGroupedSampler order: a seeded shuffle cut into mega-batches of
    ``min(n // (4 * group_size), 50) * group_size`` samples, each sorted longest first, the longest
    sample of all moved to the very front (so an out-of-memory shows at step 1, not hours later)."""
    n = len(lengths)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen).tolist()
    mult = max(1, min(n // (group_size * 4), 50))
    size = mult * group_size
    megas = [sorted(order[i:i + size], key=lambda k: lengths[k], reverse=True) for i in range(0, n, size)]
    longest = max(range(len(megas)), key=lambda m: lengths[megas[m][0]])
    megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [k for mega in megas for k in mega]


def shuffled_order(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def micro_batches(order: list[int], per_device: int, world: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches: global batches of ``per_device * world`` consecutive samples of
    ``order``, rank r taking slice r. A short last batch is filled from the start of the order, so every
    rank runs the same number of steps (as accelerate's even_batches does)."""
    glob = per_device * world
    if not order:
        return []
    n_batches = -(-len(order) // glob)
    padded = list(order)
    while len(padded) < n_batches * glob:
        padded += order[: n_batches * glob - len(padded)]
    return [padded[b * glob + rank * per_device: b * glob + (rank + 1) * per_device] for b in range(n_batches)]


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-pad ids (pad id) and labels (ignored); concatenate every sample's tiles in order."""
    longest = max(len(e.input_ids) for e in examples)
    ids = np.full((len(examples), longest), pad_id, dtype=np.int64)
    labels = np.full((len(examples), longest), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(examples), longest), dtype=np.int64)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = e.input_ids
        labels[row, : len(e.labels)] = e.labels
        mask[row, : len(e.input_ids)] = 1
    tiles = [e.pixel_values for e in examples if e.pixel_values is not None]
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
        # Pure-text samples bring no tiles (hf_native pitfall 8): a batch of only text has no pixel_values.
        "pixel_values": torch.from_numpy(np.concatenate(tiles)) if tiles else None,
        "num_samples": len(examples),
    }
