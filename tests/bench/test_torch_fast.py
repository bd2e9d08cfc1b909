"""The fast torch path (static cache, device-side greedy) gives the plain torch path's tokens."""

from __future__ import annotations

import numpy as np
import pytest

from ivl_ros.model.engine import GenerationSettings, VisionLanguageEngine


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    plain = VisionLanguageEngine.load(tiny_checkpoint, fast=False)
    fast = VisionLanguageEngine.load(tiny_checkpoint, fast=True)
    return plain, fast


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        GenerationSettings(max_new_tokens=40),
        GenerationSettings(max_new_tokens=30, min_new_tokens=8),
        GenerationSettings(max_new_tokens=25, min_new_tokens=25),
    ],
)
def test_greedy_tokens_identical_single(engines, sample_frame, settings):
    plain, fast = engines
    questions = ["Provide a one-sentence caption for the provided image.", "Hi", "Where?", "Is there a chair?"]
    for i, question in enumerate(questions):
        image = sample_frame if i % 2 == 0 else _frame(i)
        a = plain.ask(image, question, settings=settings)
        b = fast.ask(image, question, settings=settings)
        assert b.token_ids == a.token_ids and b.answer == a.answer


def test_greedy_tokens_identical_batch_with_padding(engines, sample_frame):
    plain, fast = engines
    images = [sample_frame, None, _frame(3)[:100, :250], sample_frame[::-1]]
    questions = ["Describe.", "What is in front of the robot?", "Is there a red box?", "Where?"]
    settings = GenerationSettings(max_new_tokens=24, min_new_tokens=4)
    a = plain.ask_batch(images, questions, max_tiles=4, settings=settings)
    b = fast.ask_batch(images, questions, max_tiles=4, settings=settings)
    assert [x.token_ids for x in b] == [x.token_ids for x in a]


@pytest.mark.slow
def test_stop_token_ends_rows_and_check_interval_does_not_matter(engines, sample_frame):
    plain, fast = engines
    settings = GenerationSettings(max_new_tokens=40)
    ref = [plain.ask(sample_frame, q, settings=settings).token_ids for q in ("Hi", "Go", "Where?")]
    for every in (1, 3, 64):
        fast.backend.check_every = every
        got = [fast.ask(sample_frame, q, settings=settings).token_ids for q in ("Hi", "Go", "Where?")]
        assert got == ref
    fast.backend.check_every = 8


def test_streaming_and_sampling_use_the_session_protocol(engines, sample_frame):
    plain, fast = engines
    pieces: list[str] = []
    settings = GenerationSettings(max_new_tokens=12)
    streamed = fast.ask(sample_frame, "Hi", settings=settings, on_text=pieces.append)
    assert streamed.token_ids == plain.ask(sample_frame, "Hi", settings=settings).token_ids and pieces
    sampled = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=20, seed=3)
    assert (
        fast.ask(sample_frame, "Hi", settings=sampled).token_ids
        == plain.ask(sample_frame, "Hi", settings=sampled).token_ids
    )


def test_device_tiling_through_the_engine_gives_the_same_tokens(engines, tiny_checkpoint, sample_frame):
    from ivl_ros.model.backends.torch_fast import FastTorchBackend

    plain, fast = engines
    tiled = VisionLanguageEngine(
        FastTorchBackend(fast.backend.loaded, device_tiling=True), fast.tokenizer, fast.spec, fast.model_id
    )
    prepared = tiled.prepare(sample_frame, "Describe.", max_tiles=4)
    assert not isinstance(prepared.pixel_values, np.ndarray)  # tiles made (and kept) on the model's device
    assert np.array_equal(prepared.pixel_values.numpy(), plain.prepare(sample_frame, "Describe.", 4).pixel_values)
    settings = GenerationSettings(max_new_tokens=20, min_new_tokens=3)
    images = [sample_frame, None, _frame(5)]
    questions = ["Describe.", "Hi", "Where?"]
    a = plain.ask_batch(images, questions, max_tiles=4, settings=settings)
    b = tiled.ask_batch(images, questions, max_tiles=4, settings=settings)
    assert [x.token_ids for x in b] == [x.token_ids for x in a]
    assert tiled.caption(sample_frame).token_ids == plain.caption(sample_frame).token_ids


def test_session_grows_its_cache_past_the_first_allocation(engines, monkeypatch):
    from ivl_ros.model.backends import torch_fast

    plain, fast = engines
    monkeypatch.setattr(torch_fast, "STREAM_SLACK", 1)
    monkeypatch.setattr(torch_fast, "CACHE_QUANTUM", 8)
    settings = GenerationSettings(max_new_tokens=30, min_new_tokens=30)
    pieces: list[str] = []
    got = fast.ask(None, "Tell me a long story.", settings=settings, on_text=pieces.append)
    assert got.token_ids == plain.ask(None, "Tell me a long story.", settings=settings).token_ids


def _prefill_inputs(n: int = 6):
    import torch

    ids = torch.arange(5, 5 + n)[None]
    return ids, (ids, torch.arange(n)[None], torch.ones_like(ids, dtype=torch.bool), None, None), (n, True, 0)


def test_compiled_prefill_is_what_the_first_token_runs(engines, monkeypatch):
    """compile_prefill: the function torch.compile returns is the prefill of the first-token pass (a stand-in
    compiler that counts calls; on CPU there are no graphs, so the plumbing is tested, not Inductor)."""
    import torch

    _, fast = engines
    backend = fast.backend
    assert not backend.compile_prefill  # off unless asked for
    calls = []

    def counting_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(kwargs)
            return fn(*args, **kw)

        return compiled

    monkeypatch.setattr(torch, "compile", counting_compile)
    monkeypatch.setattr(backend, "compile_prefill", True)
    monkeypatch.setattr(backend, "_prefill_compiled", None)
    ids, inputs, key = _prefill_inputs()
    st = backend.state(1, 64)
    with torch.inference_mode():
        prefill = backend._prefill_for(st, key, inputs)
        assert backend.prefill_mode == "compiled" and calls == [{"dynamic": False}]  # compiled and tried once
        got = backend._first_logits(st, *inputs[:3], True, None, None, None, prefill)
        assert len(calls) == 2
        ref = backend._first_logits(st, *inputs[:3], True, None, None, None)
    assert torch.equal(got, ref)


def test_compiled_prefill_falls_back_to_eager_when_compiling_fails(engines, monkeypatch):
    import torch

    _, fast = engines
    backend = fast.backend

    def failing_compile(fn, **kwargs):
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(backend, "compile_prefill", True)
    monkeypatch.setattr(backend, "_prefill_compiled", None)
    _, inputs, key = _prefill_inputs()
    with torch.inference_mode():
        prefill = backend._prefill_for(backend.state(1, 64), key, inputs)
    assert prefill == backend.lm.prefill and backend.prefill_mode == "eager"
    assert not backend.compile_prefill  # not tried again for the next length
