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
from finetune.video import FrameSampling, read_video_frames, sample_frame_files
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
    labels[cur : cur + n] = [IGNORE_INDEX] * len(labels[cur : cur + n])
    cur += n
    for part in parts[1:-1]:
        answer, rest = part.split(USER_ROLE, 1)
        cur += n_tokens(answer)
        n = n_tokens(USER_ROLE + rest + ASSISTANT_ROLE)
        labels[cur : cur + n] = [IGNORE_INDEX] * len(labels[cur : cur + n])
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


def _first_turn_with_media(sample: Sample, n_frames: int) -> list[dict]:
    conv = [dict(t) for t in sample.conversations]
    first = conv[0]["value"]
    if sample.kind == "image" and IMAGE_TAG not in first:
        conv[0]["value"] = IMAGE_TAG + "\n" + first
    elif sample.kind == "video" and first.count(IMAGE_TAG) == 0:
        if VIDEO_TAG not in first:
            first = VIDEO_TAG + "\n" + first
        # Upstream replaces "<video>\n" by the frame lines without a trailing newline; kept as is.
        frames = "\n".join(f"Frame{i + 1}: {IMAGE_TAG}" for i in range(n_frames))
        conv[0]["value"] = first.replace(VIDEO_TAG + "\n", frames)
    return conv


def _truncate_images(
    ids: list[int], tiles: list[int], tokens_per_tile: int, start_id: int, context_id: int
) -> tuple[int, int]:
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


def video_frames(sample: Sample, sampling: FrameSampling, rng: random.Random | None) -> list[Image.Image]:
    """The frames of a video sample for one build: decoded from a video file, or read from a frame folder, and
    sampled as upstream does; an explicit list of frame files is used as listed."""
    if sample.video_file is not None:
        return read_video_frames(sample.video_file, sampling, rng)
    files = sample.images if sample.frames_listed else sample_frame_files(sample.images, sampling, rng)
    return [load_image(p) for p in files]


def build_example(
    sample: Sample,
    tokenizer: InternLM2Tokenizer,
    spec: ModelSpec,
    max_dynamic_patch: int,
    max_seq_length: int,
    rng: random.Random | None = None,
    sampling: FrameSampling = FrameSampling(),
) -> Example:
    """Tile the images, render and tokenize the conversation, mask the labels, truncate.

    ``rng`` drives the random parts (JPEG augmentation where the dataset asks for it, video frame sampling);
    without it video frames are taken from the middle of their intervals, ``sampling.max_frames`` of them.
    """
    mdp = sample.dataset.max_dynamic_patch or max_dynamic_patch
    aug = rng if sample.dataset.data_augment else None
    pixel_list: list[np.ndarray] = []
    if sample.kind == "image":
        pixel_list = [_pixels(load_image(sample.images[0]), spec, mdp, aug)]
    elif sample.kind == "multi_image":
        per_image = max(1, mdp // len(sample.images))
        pixel_list = [_pixels(load_image(p), spec, per_image, aug) for p in sample.images]
    elif sample.kind == "video":
        pixel_list = [_pixels(frame, spec, 1, aug) for frame in video_frames(sample, sampling, rng)]
    tiles = [int(p.shape[0]) for p in pixel_list]
    conv = _first_turn_with_media(sample, len(pixel_list))
    text = render_training_conversation(conv, spec)
    if tiles:
        text = expand_image_placeholders(text, tiles, spec.tokens_per_tile)
    full = tokenizer.encode(text, add_bos=True)
    ids = full[:max_seq_length]
    labels, mismatch = upstream_labels(text, full, tokenizer, max_seq_length)
    labels = labels[:max_seq_length]
    truncated = len(full) > max_seq_length
    if truncated and tiles:
        cut, keep = _truncate_images(
            ids, tiles, spec.tokens_per_tile, tokenizer.token_to_id(IMG_START), spec.image_token_id
        )
        ids, labels, tiles, pixel_list = ids[:cut], labels[:cut], tiles[:keep], pixel_list[:keep]
    pixel_values = np.concatenate(pixel_list) if pixel_list else None
    return Example(ids, labels, pixel_values, tiles, truncated, mismatch)


def estimated_length(sample: Sample, tokenizer: InternLM2Tokenizer, spec: ModelSpec, max_dynamic_patch: int) -> int:
    """Upstream's group_by_length estimate: the line's ``length``, else the conversation's token count plus
    the image-token budget ``tokens_per_tile * (max_dynamic_patch + use_thumbnail)`` (videos included, as
    upstream; this only orders the data)."""
    if sample.length is not None:
        return sample.length
    return _text_tokens(sample, tokenizer) + spec.tokens_per_tile * _tile_budget(sample, max_dynamic_patch, spec)


@dataclass(frozen=True)
class TokenCount:
    estimate: int  # upstream's group_by_length estimate (orders the data)
    bound: int  # an upper bound of the built sample's length before truncation (plans memory)


def sample_token_counts(
    samples: list[Sample],
    tokenizer: InternLM2Tokenizer,
    spec: ModelSpec,
    max_dynamic_patch: int,
    sampling: FrameSampling,
) -> list[TokenCount]:
    """Both counts for every sample, tokenizing each conversation once."""
    overhead = len(
        tokenizer.encode(
            render_training_conversation([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], spec),
            add_bos=True,
        )
    )
    counts = []
    for sample in samples:
        text = _text_tokens(sample, tokenizer)
        budget = _tile_budget(sample, max_dynamic_patch, spec)
        estimate = sample.length if sample.length is not None else text + spec.tokens_per_tile * budget
        # the template once, role markers per turn (8 is generous), and per tile its context tokens plus
        # <img></img> and, for video frames, the "FrameN: " line (8 is generous)
        bound = (
            text
            + overhead
            + 8 * len(sample.conversations)
            + (spec.tokens_per_tile + 8) * _most_tiles(sample, max_dynamic_patch, spec, sampling)
        )
        counts.append(TokenCount(estimate, bound))
    return counts


def _most_tiles(sample: Sample, max_dynamic_patch: int, spec: ModelSpec, sampling: FrameSampling) -> int:
    if sample.kind == "video":
        if sample.frames_listed:
            return len(sample.images)
        if sample.video_file is not None:
            return sampling.max_frames
        return min(len(sample.images), sampling.max_frames)
    if sample.kind == "multi_image":
        per_image = max(1, _max_tiles(sample, max_dynamic_patch) // len(sample.images))
        return len(sample.images) * (per_image + int(spec.use_thumbnail and per_image > 1))
    if sample.kind == "text":
        return 0
    return _tile_budget(sample, max_dynamic_patch, spec)


def _max_tiles(sample: Sample, max_dynamic_patch: int) -> int:
    return sample.dataset.max_dynamic_patch or max_dynamic_patch


def _tile_budget(sample: Sample, max_dynamic_patch: int, spec: ModelSpec) -> int:
    return _max_tiles(sample, max_dynamic_patch) + int(spec.use_thumbnail)


def _text_tokens(sample: Sample, tokenizer: InternLM2Tokenizer) -> int:
    return len(tokenizer.encode("\n".join(t["value"] for t in sample.conversations)))
