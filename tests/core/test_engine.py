"""Engine behaviour users see: chat() semantics, batching, generation options, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ivl_ros.errors import ImageError, OptionError
from ivl_ros.model.engine import GenerationSettings
from tests.conftest import REPO

DEMO = REPO / "models" / "ivl-demo"  # the embedded demo captioner, committed with the code

SHORT = GenerationSettings(max_new_tokens=12)


def test_caption_defaults_follow_upstream_eval(tiny_engine, sample_frame):
    answer = tiny_engine.caption(sample_frame)
    grid_tiles = 7  # 320x240 at max 6 -> 3x2 + thumbnail
    assert answer.num_tiles == grid_tiles
    assert 8 <= len(answer.token_ids) <= 30
    prompt = tiny_engine.tokenizer.decode(answer.prompt_ids, skip_special_tokens=False)
    assert "Provide a one-sentence caption for the provided image." in prompt
    n_ctx = answer.prompt_ids.count(tiny_engine.spec.image_token_id)
    assert n_ctx == grid_tiles * tiny_engine.spec.tokens_per_tile


QUESTIONS = ["What is ahead?", "Hi", "Describe the room.", "Is there a chair?", "Go", "Where?"]


def test_stops_on_im_end_and_reports_it(sample_frame):
    """The trained demo model ends its answers with <|im_end|> (the random tiny model never does): generation
    stops there, well before the cap, and the stop token is the last id reported."""
    from ivl_ros.model.engine import VisionLanguageEngine

    demo = VisionLanguageEngine.load(DEMO)
    for question in QUESTIONS:
        answer = demo.ask(sample_frame, question, settings=GenerationSettings(max_new_tokens=40))
        assert len(answer.token_ids) < 40 and answer.token_ids[-1] == demo.eos_id, (question, answer.token_ids)
        assert demo.eos_id not in answer.token_ids[:-1]
        assert answer.answer and "<|im_end|>" not in answer.answer


def test_without_a_stop_token_the_answer_runs_to_the_cap(tiny_engine, sample_frame):
    for question in QUESTIONS:
        answer = tiny_engine.ask(sample_frame, question, settings=GenerationSettings(max_new_tokens=40))
        assert len(answer.token_ids) == 40 and tiny_engine.eos_id not in answer.token_ids


def test_min_new_tokens_masks_the_stop_token(tiny_engine, sample_frame):
    answer = tiny_engine.ask(sample_frame, "Hi", settings=GenerationSettings(max_new_tokens=20, min_new_tokens=15))
    assert len(answer.token_ids) >= 15 and tiny_engine.eos_id not in answer.token_ids[:15]


def test_batch_rows_equal_single_results(tiny_engine, sample_frame):
    images = [sample_frame, None, sample_frame[:100, :250], sample_frame[::-1]]
    questions = ["Describe.", "What is in front of the robot?", "Is there a red box?", "<image>\nWhere?"]
    batch = tiny_engine.ask_batch(images, questions, max_tiles=4, settings=SHORT)
    single = [tiny_engine.ask(i, q, max_tiles=4, settings=SHORT) for i, q in zip(images, questions, strict=True)]
    for b, s in zip(batch, single, strict=True):
        assert b.token_ids == s.token_ids and b.answer == s.answer and b.prompt_ids == s.prompt_ids


def test_text_only_and_history(tiny_engine, sample_frame):
    text = tiny_engine.ask(None, "Hello?", settings=SHORT)
    assert text.num_tiles == 0 and tiny_engine.spec.image_token_id not in text.prompt_ids
    first = tiny_engine.ask(sample_frame, "What is it?", settings=SHORT)
    assert first.question == "<image>\nWhat is it?"
    second = tiny_engine.ask(sample_frame, "And then?", settings=SHORT, history=first.history)
    prompt = tiny_engine.tokenizer.decode(second.prompt_ids, skip_special_tokens=False)
    assert prompt.count("What is it?") == 1 and "And then?" in prompt
    assert second.prompt_ids.count(tiny_engine.spec.image_token_id) == first.prompt_ids.count(
        tiny_engine.spec.image_token_id
    )


def test_bgr_and_mono_frames(tiny_engine, sample_frame):
    from ivl_ros.model.images import frame_to_rgb, load_image

    bgr = np.ascontiguousarray(sample_frame[:, :, ::-1])
    np.testing.assert_array_equal(frame_to_rgb(bgr, "bgr8"), sample_frame)
    rgba = np.dstack([sample_frame, np.full(sample_frame.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(frame_to_rgb(rgba, "rgba8"), sample_frame)
    assert load_image(sample_frame[:, :, 0]).mode == "RGB"


def test_sampling_is_seeded(tiny_engine, sample_frame):
    s = GenerationSettings(max_new_tokens=10, min_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    a = tiny_engine.ask(sample_frame, "Hi", settings=s)
    b = tiny_engine.ask(sample_frame, "Hi", settings=s)
    c = tiny_engine.ask(sample_frame, "Hi", settings=GenerationSettings(**{**s.__dict__, "seed": 8}))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_streaming_callback_sees_growing_text(tiny_engine, sample_frame):
    seen: list[str] = []
    answer = tiny_engine.ask(
        sample_frame, "Hi", settings=GenerationSettings(max_new_tokens=10, min_new_tokens=10), on_text=seen.append
    )
    assert len(seen) == 10 and seen[-1] == answer.answer


@pytest.mark.parametrize(
    "image,error",
    [
        ("does/not/exist.png", "not found"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 5), np.uint8), "HxWx3"),
    ],
)
def test_bad_images(tiny_engine, image, error):
    with pytest.raises(ImageError, match=error):
        tiny_engine.ask(image, "Hi", settings=SHORT)


def test_unreadable_and_empty_files(tiny_engine, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError, match="empty"):
        tiny_engine.ask(empty, "Hi")
    with pytest.raises(ImageError, match="cannot read"):
        tiny_engine.ask(junk, "Hi")


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"max_tiles": 0}, "max_tiles"),
        ({"max_tiles": 41}, "max_tiles"),
        ({"settings": GenerationSettings(max_new_tokens=0)}, "max_new_tokens"),
        ({"settings": GenerationSettings(max_new_tokens=5, min_new_tokens=6)}, "min_new_tokens"),
        ({"settings": GenerationSettings(do_sample=True, temperature=0)}, "temperature"),
    ],
)
def test_bad_options(tiny_engine, sample_frame, kwargs, error):
    with pytest.raises(OptionError, match=error):
        tiny_engine.ask(sample_frame, "Hi", **kwargs)


def test_empty_question(tiny_engine, sample_frame):
    with pytest.raises(OptionError, match="empty"):
        tiny_engine.ask(sample_frame, "   ")


def test_collate_prompts_pads_on_the_left(tiny_engine, sample_frame):
    from ivl_ros.model.engine import collate_prompts

    prepared = [tiny_engine.prepare(sample_frame, "What is ahead?", max_tiles=2), tiny_engine.prepare(None, "Hi")]
    ids, mask, pixels = collate_prompts(prepared, pad_id=-7)
    long, short = (len(p.prompt_ids) for p in prepared)
    assert ids.shape == mask.shape == (2, long) and long > short
    assert (
        ids[1, : long - short].tolist() == [-7] * (long - short)
        and ids[1, long - short :].tolist() == prepared[1].prompt_ids
    )
    assert mask[0].all() and mask[1].tolist() == [0] * (long - short) + [1] * short
    assert pixels is prepared[0].pixel_values or np.array_equal(pixels, prepared[0].pixel_values)


@pytest.mark.parametrize(
    "change,error",
    [
        (lambda p: p.pixel_values[:, :, :50], r"shape \(7, 3, 50, 112\).*expected shape \(7, 3, 112, 112\)"),
        (lambda p: p.pixel_values.astype(np.float64), "dtype float64.*float32"),
        (lambda p: p.pixel_values[:2], r"shape \(2, 3, 112, 112\).*expected shape \(7, 3, 112, 112\)"),
        (lambda p: p.pixel_values.tolist(), "must be an array of shape"),
        (lambda p: None, "image-context tokens but no pixel values"),
    ],
)
def test_pixel_values_checked_at_the_engine_boundary(tiny_engine, sample_frame, change, error):
    from dataclasses import replace

    prepared = tiny_engine.prepare(sample_frame, "What is ahead?", max_tiles=6)
    assert prepared.pixel_values.shape == (7, 3, 112, 112)  # 3x2 grid + thumbnail, 112 px tiles
    with pytest.raises(OptionError, match=error):
        tiny_engine.run([replace(prepared, pixel_values=change(prepared))], SHORT)


def test_image_tokens_must_match_the_tiles(tiny_engine, sample_frame):
    from dataclasses import replace

    prepared = tiny_engine.prepare(sample_frame, "What is ahead?", max_tiles=6)
    with pytest.raises(OptionError, match="7 tiles need 7 \\* 16 = 112"):
        tiny_engine.run(
            [
                replace(
                    prepared,
                    prompt_ids=prepared.prompt_ids[:-5] + [tiny_engine.spec.image_token_id] + prepared.prompt_ids[-5:],
                )
            ],
            SHORT,
        )


def test_prompt_beyond_the_model_context(tiny_checkpoint, sample_frame):
    from dataclasses import replace

    from ivl_ros.model.engine import VisionLanguageEngine

    engine = VisionLanguageEngine.load(tiny_checkpoint)
    engine.spec = replace(engine.spec, context_length=100)
    with pytest.raises(OptionError, match="over the model's context of 100 tokens"):
        engine.ask(sample_frame, "Hi", settings=SHORT)
    assert engine.ask(None, "Hi", settings=SHORT).answer is not None  # the text-only prompt fits (< 100 tokens)
