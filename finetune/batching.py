"""Length-grouped sample order, per-rank micro-batches, and the two batch layouts: padded and packed."""

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
    megas = [sorted(order[i : i + size], key=lambda k: lengths[k], reverse=True) for i in range(0, n, size)]
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
    return [padded[b * glob + rank * per_device : b * glob + (rank + 1) * per_device] for b in range(n_batches)]


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


def pack(micro_batches: list[list[Example]], n_micro: int, pixel_dtype: torch.dtype | None = None) -> dict:
    """Several micro-batches' samples end to end in one row, without padding (the packed layout).

    ``segments`` are the (start, end) token ranges of the samples; ``position_ids`` restart at 0 in each, so
    each sample sees exactly what it would alone. ``targets[t]`` is the label of token t + 1 of the same
    sample (ignored at each sample's last token). ``weights`` reproduce the padded layout's loss, the mean over
    the step's ``n_micro`` micro-batches of each micro-batch's mean token loss: a supervised token of
    micro-batch m weighs 1 / (n_micro * supervised tokens of m), so the weighted sum over every forward of a
    step equals that loss (and a micro-batch with nothing supervised adds nothing, as before).
    ``pixel_dtype``: the vision tower's dtype, so that the cast it does anyway happens here (half the bytes
    through shared memory and to the GPU for bf16; the values are the same).
    """
    ids: list[int] = []
    targets: list[int] = []
    weights: list[float] = []
    positions: list[int] = []
    segments: list[tuple[int, int]] = []
    tiles = []
    for examples in micro_batches:
        shifted = [list(e.labels[1:]) + [IGNORE_INDEX] for e in examples]
        supervised = sum(sum(t != IGNORE_INDEX for t in row) for row in shifted)
        weight = 1.0 / (n_micro * supervised) if supervised else 0.0
        for e, row in zip(examples, shifted, strict=True):
            start = len(ids)
            ids.extend(e.input_ids)
            positions.extend(range(len(e.input_ids)))
            targets.extend(row)
            weights.extend(weight if t != IGNORE_INDEX else 0.0 for t in row)
            segments.append((start, len(ids)))
            if e.pixel_values is not None:
                tiles.append(e.pixel_values)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "weights": torch.tensor(weights, dtype=torch.float32),
        "segments": tuple(segments),
        "pixel_values": torch.from_numpy(np.concatenate(tiles)).to(pixel_dtype) if tiles else None,
        "num_samples": sum(len(m) for m in micro_batches),
    }
