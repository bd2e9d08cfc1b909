"""splice_image_features: one rule and one set of error texts for numpy (onnx backend) and torch (torch backends)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivl_ros.errors import OptionError
from ivl_ros.model.splice import splice_image_features

IMG = 7


def _inputs():
    ids = np.array([[1, IMG, IMG, 2], [IMG, 3, IMG, 4]])
    embeds = np.zeros((2, 4, 3), np.float32)
    features = np.arange(1, 13, dtype=np.float32).reshape(2, 2, 3)  # 2 "tiles" x 2 tokens
    return ids, embeds, features


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_features_fill_the_slots_in_row_major_order(lib):
    ids, embeds, features = _inputs()
    if lib == "torch":
        ids, embeds, features = (torch.from_numpy(a) for a in (ids, embeds, features))
    out = splice_image_features(embeds, ids, IMG, "pixels", lambda pv: features)
    flat = np.asarray(features).reshape(-1, 3)
    got = np.asarray(out)
    # row 0: positions 1, 2; row 1: positions 0, 2 (masked_scatter's order)
    assert np.array_equal(got[0, 1], flat[0]) and np.array_equal(got[0, 2], flat[1])
    assert np.array_equal(got[1, 0], flat[2]) and np.array_equal(got[1, 2], flat[3])
    assert not got[0, 0].any() and not got[1, 3].any()


def test_errors_name_the_counts_and_skip_the_vision_model_without_an_image():
    ids, embeds, features = _inputs()
    calls = []
    with pytest.raises(OptionError, match="the prompt has 4 image-context tokens but no image was given"):
        splice_image_features(embeds, ids, IMG, None, lambda pv: calls.append(pv))
    assert not calls
    with pytest.raises(OptionError, match=r"image features \(2 tokens\) do not match the prompt's 4"):
        splice_image_features(embeds, ids, IMG, "pixels", lambda pv: features[:1])
    text = np.array([[1, 2, 3]])
    same = np.ones((1, 3, 3), np.float32)
    assert splice_image_features(same, text, IMG, None, lambda pv: calls.append(pv)) is same and not calls


def test_both_backends_use_it(tiny_engine, tiny_checkpoint):
    """The torch backend's embed_prompt goes through the shared rule (its error text proves it)."""
    backend = tiny_engine.backend
    ids = torch.tensor([[1, backend.image_token_id, 2]])
    with pytest.raises(OptionError, match="the prompt has 1 image-context tokens but no image was given"):
        backend.embed_prompt(ids, None)
