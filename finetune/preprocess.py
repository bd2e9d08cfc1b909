"""One sample -> (input_ids, labels, pixel_values), as upstream's LazySupervisedDataset + preprocess_internlm.

Prompt rendering, ``<image>`` expansion, tiling and the tokenizer all come from the model core
(``ivl_ros.model``), so training sees exactly the tokens and pixels inference does.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from finetune.data import IMAGE_TAG, VIDEO_TAG, Sample
from ivl_ros.errors import IvlError
from ivl_ros.model.images import load_image
from ivl_ros.model.prompt import IM_END, IM_START, IMG_START, expand_image_placeholders, render_conversation
from ivl_ros.model.spec import ModelSpec
from ivl_ros.model.tiling import normalize_tile, pixel_values_for, tile_image
from ivl_ros.model.tokenizer import InternLM2Tokenizer

IGNORE_INDEX = -100
USER_ROLE = f"{IM_START}user\n"
ASSISTANT_ROLE = f"{IM_START}assistant\n"
JPEG_QUALITIES = tuple(range(75, 101))  # data_augment: a random JPEG re-encode (quality 75..100) per tile
# What building one sample can raise for bad input: load_image's ImageError (every decode failure) and
# PIL's refusal of a decompression bomb, should one reach PIL before the core's pixel limit.
SAMPLE_FAILURES = (IvlError, Image.DecompressionBombError)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pixel_values: np.ndarray | None  # (tiles, 3, S, S) float32; None for pure text
    num_tiles: list[int]
    truncated: bool = False
    masked_all: bool = False  # upstream's "tokenization mismatch": the whole sample is unsupervised


def render_training_conversation(conversations: list[dict], spec: ModelSpec) -> str:
    """The full internlm2-chat text of a conversation, every assistant turn closed by ``<|im_end|>``.

    Built from the core's inference renderer (history + last question, open assistant turn) plus the last
    answer, so the template lives in one place.
    """
    values = [t["value"].strip() for t in conversations]  # upstream strips every turn
    pairs = list(zip(values[0::2], values[1::2], strict=True))
    history, (question, answer) = pairs[:-1], pairs[-1]
    return render_conversation(question, history, spec.system_message, spec.template) + answer + IM_END


def upstream_labels(text: str, ids: list[int], tokenizer: InternLM2Tokenizer, max_len: int) -> tuple[list[int], bool]:
    """preprocess_internlm's masking: only assistant messages and their ``<|im_end|>`` are supervised.

    The lengths of the pieces come from tokenizing each piece on its own (minus ``<s>``), as upstream does;
    if they do not add up to the full length, every label is masked (upstream's "tokenization mismatch").
    """
    def n_tokens(piece: str) -> int:
        return len(tokenizer.encode(piece, add_bos=False))

    labels = list(ids)
    total = len(ids)
    labels[0] = IGNORE_INDEX  # <s>
    cur = 1
    parts = text.split(ASSISTANT_ROLE)
    n = n_tokens(parts[0] + ASSISTANT_ROLE)
    labels[cur:cur + n] = [IGNORE_INDEX] * len(labels[cur:cur + n])
    cur += n
    for part in parts[1:-1]:
        answer, rest = part.split(USER_ROLE, 1)
        cur += n_tokens(answer)
        n = n_tokens(USER_ROLE + rest + ASSISTANT_ROLE)
        labels[cur:cur + n] = [IGNORE_INDEX] * len(labels[cur:cur + n])
        cur += n
    cur += n_tokens(parts[-1])
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    mismatch = cur < max_len and cur != total
    if mismatch:
        labels = [IGNORE_INDEX] * total
    return labels[:total], mismatch


def _jpeg_degrade(tile: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    tile.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _pixels(image: Image.Image, spec: ModelSpec, max_tiles: int, rng: random.Random | None) -> np.ndarray:
    if rng is None:
        return pixel_values_for(image, spec.tile_size, max_tiles, spec.use_thumbnail)
    tiles = tile_image(image, spec.tile_size, max_tiles, spec.use_thumbnail)
    return np.stack([normalize_tile(_jpeg_degrade(t, rng.choice(JPEG_QUALITIES)), spec.tile_size) for t in tiles])


def _first_turn_with_media(sample: Sample) -> list[dict]:
    conv = [dict(t) for t in sample.conversations]
    first = conv[0]["value"]
    if sample.kind == "image" and IMAGE_TAG not in first:
        conv[0]["value"] = IMAGE_TAG + "\n" + first
    elif sample.kind == "video" and first.count(IMAGE_TAG) == 0:
        if VIDEO_TAG not in first:
            first = VIDEO_TAG + "\n" + first
        # Upstream replaces "<video>\n" by the frame lines without a trailing newline; kept as is.
        frames = "\n".join(f"Frame{i + 1}: {IMAGE_TAG}" for i in range(len(sample.images)))
        conv[0]["value"] = first.replace(VIDEO_TAG + "\n", frames)
    return conv


def _truncate_images(ids: list[int], tiles: list[int], tokens_per_tile: int, start_id: int,
                     context_id: int) -> tuple[int, int]:
    """When truncation cut into an image, cut before that image's ``<img>`` instead.

    Returns (new length, number of whole images kept). Upstream keeps the partial image features; the native
    model needs one feature per context token, so the cut image (in a user turn, never supervised) is dropped.
    """
    kept = ids.count(context_id)
    images, used = 0, 0
    for n in tiles:
        if used + n * tokens_per_tile > kept:
            break
        used += n * tokens_per_tile
        images += 1
    if images == len(tiles):
        return len(ids), images
    starts = [i for i, t in enumerate(ids) if t == start_id]
    # The cut may also fall between two images (the next <img> is gone already): keep everything.
    return (starts[images] if images < len(starts) else len(ids)), images


def build_example(sample: Sample, tokenizer: InternLM2Tokenizer, spec: ModelSpec, max_dynamic_patch: int,
                  max_seq_length: int, rng: random.Random | None = None) -> Example:
    """Tile the images, render and tokenize the conversation, mask the labels, truncate."""
    mdp = sample.dataset.max_dynamic_patch or max_dynamic_patch
    aug = rng if sample.dataset.data_augment else None
    pixel_list: list[np.ndarray] = []
    if sample.kind == "image":
        pixel_list = [_pixels(load_image(sample.images[0]), spec, mdp, aug)]
    elif sample.kind == "multi_image":
        per_image = max(1, mdp // len(sample.images))
        pixel_list = [_pixels(load_image(p), spec, per_image, aug) for p in sample.images]
    elif sample.kind == "video":
        pixel_list = [_pixels(load_image(p), spec, 1, aug) for p in sample.images]
    tiles = [int(p.shape[0]) for p in pixel_list]
    conv = _first_turn_with_media(sample)
    text = render_training_conversation(conv, spec)
    if tiles:
        text = expand_image_placeholders(text, tiles, spec.tokens_per_tile)
    full = tokenizer.encode(text, add_bos=True)
    ids = full[:max_seq_length]
    labels, mismatch = upstream_labels(text, full, tokenizer, max_seq_length)
    labels = labels[:max_seq_length]
    truncated = len(full) > max_seq_length
    if truncated and tiles:
        cut, keep = _truncate_images(ids, tiles, spec.tokens_per_tile, tokenizer.token_to_id(IMG_START),
                                     spec.image_token_id)
        ids, labels, tiles, pixel_list = ids[:cut], labels[:cut], tiles[:keep], pixel_list[:keep]
    pixel_values = np.concatenate(pixel_list) if pixel_list else None
    return Example(ids, labels, pixel_values, tiles, truncated, mismatch)


def estimated_length(sample: Sample, tokenizer: InternLM2Tokenizer, spec: ModelSpec, max_dynamic_patch: int) -> int:
    """Upstream's group_by_length estimate: the line's ``length``, else the conversation's token count plus
    the image-token budget ``tokens_per_tile * (max_dynamic_patch + use_thumbnail)``."""
    if sample.length is not None:
        return sample.length
    text = "\n".join(t["value"] for t in sample.conversations)
    mdp = sample.dataset.max_dynamic_patch or max_dynamic_patch
    return len(tokenizer.encode(text)) + spec.tokens_per_tile * (mdp + int(spec.use_thumbnail))
