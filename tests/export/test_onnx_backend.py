"""The ``onnx`` backend generates exactly the torch backend's greedy tokens (same loop, same inputs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ivl_ros.model.backends.engines import TileCountError
from ivl_ros.model.engine import CAPTION_SETTINGS, GenerationSettings

SETTINGS = GenerationSettings(max_new_tokens=24)
QUESTIONS = ["What is in front of the robot?", "Describe the room.", "Is there a chair?", "Hi"]


def frames(sample_frame):
    return [sample_frame, sample_frame[:100, :250], sample_frame[::-1, ::-1], sample_frame[:, :120]]


def test_greedy_tokens_equal_torch_for_images_and_questions(tiny_engine, onnx_engine, sample_frame):
    cases = 0
    for image in frames(sample_frame):
        for question in QUESTIONS[:3]:
            ref = tiny_engine.ask(image, question, settings=SETTINGS)
            got = onnx_engine.ask(image, question, settings=SETTINGS)
            assert got.prompt_ids == ref.prompt_ids
            assert got.token_ids == ref.token_ids, (question, image.shape)
            assert got.answer == ref.answer
            cases += 1
    print(f"{cases}/{cases} image+question cases token-identical")


def test_text_only_and_min_new_tokens_equal_torch(tiny_engine, onnx_engine):
    for question in QUESTIONS:
        settings = GenerationSettings(max_new_tokens=20, min_new_tokens=10)
        assert (
            onnx_engine.ask(None, question, settings=settings).token_ids
            == tiny_engine.ask(None, question, settings=settings).token_ids
        )


def test_left_padded_batch_equals_torch_and_chunks_tiles(tiny_engine, onnx_engine, sample_frame):
    # 4 images x up to 13 tiles exceed the 13-tile profile: the backend runs the tiles in chunks.
    images = [*frames(sample_frame), None]
    questions = ["Describe the room.", "Hi", "Is there a chair?", "What is in front of the robot?", "Where?"]
    ref = tiny_engine.ask_batch(images, questions, settings=SETTINGS)
    got = onnx_engine.ask_batch(images, questions, settings=SETTINGS)
    assert len({len(a.prompt_ids) for a in ref}) > 1  # really left-padded
    assert [a.token_ids for a in got] == [a.token_ids for a in ref]


def test_caption_equals_torch(tiny_engine, onnx_engine, sample_frame):
    for image in frames(sample_frame):
        assert onnx_engine.caption(image).token_ids == tiny_engine.caption(image).token_ids


def test_tiles_outside_the_profile_are_refused(onnx_engine, sample_frame):
    wide = np.tile(sample_frame, (1, 4, 1))  # 1280x240: 20 tiles + thumbnail at max_tiles 20
    with pytest.raises(TileCountError, match=r"21 tiles .* profile allows 1\.\.13.*--max-tiles 20"):
        onnx_engine.ask(wide, "Hi", max_tiles=20, settings=CAPTION_SETTINGS)


def test_onnx_path_imports_no_torch(tiny_checkpoint, engines_dir, sample_frame):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from ivl_ros.model.engine import VisionLanguageEngine
        engine = VisionLanguageEngine.load({str(tiny_checkpoint)!r}, backend="onnx", engines_path={str(engines_dir)!r})
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[60:180, 100:220] = (200, 40, 40)
        answer = engine.caption(frame)
        assert answer.token_ids, answer
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "transformers")))
        assert not loaded, loaded
        print("ok", len(answer.token_ids))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
