"""Image features into the prompt: the one rule every backend uses (numpy arrays or torch tensors alike).

Each ``<IMG_CONTEXT>`` position of the prompt, in row-major order (row, then position: the order of
torch's ``masked_scatter`` that upstream uses), takes the next image-feature vector; tiles of all rows
arrive concatenated in row order. Torch-free: it only uses indexing that numpy and torch share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ivl_ros.errors import OptionError

if TYPE_CHECKING:  # for the checker only: this module imports neither at run time
    import numpy as np
    import torch

Array = TypeVar("Array", "np.ndarray", "torch.Tensor")  # numpy (onnx, trt) or torch (torch backends)
Pixels = TypeVar("Pixels")
# The features are of embeds' kind (numpy with numpy, torch with torch): Any, as a checker does not carry
# that pairing through reshape and item assignment.


def splice_image_features(
    embeds: Array, input_ids, image_token_id: int, pixel_values: Pixels | None, image_features: Callable[[Pixels], Any]
) -> Array:
    """``embeds`` (batch, seq, hidden), writable, with every image-context row replaced; returns ``embeds``.

    ``image_features(pixel_values)`` runs the vision model, (tiles, tokens_per_tile, hidden); it is only
    called when the prompt has image slots and pixel values were given.
    """
    slots = input_ids == image_token_id
    n_slots = int(slots.sum())
    if pixel_values is None:
        if n_slots:
            raise OptionError(f"the prompt has {n_slots} image-context tokens but no image was given")
        return embeds
    features = image_features(pixel_values)
    features = features.reshape(-1, features.shape[-1])
    if features.shape[0] != n_slots:
        raise OptionError(
            f"image features ({features.shape[0]} tokens) do not match the prompt's {n_slots} image-context tokens"
        )
    embeds[slots] = features
    return embeds
