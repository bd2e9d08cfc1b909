"""The GPU export (``--precision fp16``) and its runtime, checked on ONNX Runtime's CPU provider.

The fused decoder's runtime (static in-place KV cache, right-padded prompts, greedy from the graph's top-2)
is checked exactly with the fused graph built in fp32: every path must give torch's tokens. The fp16
build is checked for what it claims (fused ops, its recorded checks) and for its agreement with torch.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ivl_ros.errors import OptionError
from ivl_ros.model.engine import GenerationSettings, VisionLanguageEngine
from tests.export.conftest import token_agreement

SETTINGS = GenerationSettings(max_new_tokens=24)
QUESTIONS = ["What is in front of the robot?", "Describe the room.", "Hi"]


def frames(sample_frame):
    return [sample_frame, sample_frame[:100, :250], sample_frame[::-1, ::-1], None]


@pytest.fixture(scope="module")
def fused32(tiny_checkpoint, fused_fp32_engines_dir):
    return VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=fused_fp32_engines_dir)


def test_fused_runtime_gives_torch_tokens_single_and_batch(tiny_engine, fused32, sample_frame):
    from ivl_ros.model.backends.ort_fused import FusedDecoder

    assert isinstance(fused32.backend.decoder, FusedDecoder)
    for image in frames(sample_frame):
        for question in QUESTIONS:
            assert (
                fused32.ask(image, question, settings=SETTINGS).token_ids
                == tiny_engine.ask(image, question, settings=SETTINGS).token_ids
            ), (question, None if image is None else image.shape)
    images = [sample_frame, None, sample_frame[:100, :250], sample_frame[:, :120]]
    questions = ["Describe the room.", "Hi", "Is there a chair?", "Where?"]
    ref = tiny_engine.ask_batch(images, questions, settings=SETTINGS)
    got = fused32.ask_batch(images, questions, settings=SETTINGS)
    assert len({len(a.prompt_ids) for a in ref}) > 1  # really padded: the runtime right-pads them
    assert [a.token_ids for a in got] == [a.token_ids for a in ref]


def test_fused_runtime_min_new_tokens_sampling_and_streaming(tiny_engine, fused32, sample_frame):
    # min_new_tokens: the second of the graph's top-2 replaces a stop token, like argmax with the stop masked
    for question in ("Hi", "Where?", "Describe the room."):
        settings = GenerationSettings(max_new_tokens=20, min_new_tokens=12)
        assert (
            fused32.ask(None, question, settings=settings).token_ids
            == tiny_engine.ask(None, question, settings=settings).token_ids
        )
    sampled = GenerationSettings(max_new_tokens=20, do_sample=True, temperature=0.8, seed=5)
    assert (
        fused32.ask(sample_frame, "Hi", settings=sampled).token_ids
        == tiny_engine.ask(sample_frame, "Hi", settings=sampled).token_ids
    )
    texts: list[str] = []
    streamed = fused32.ask(sample_frame, "Describe the room.", settings=SETTINGS, on_text=texts.append)
    assert streamed.token_ids == tiny_engine.ask(sample_frame, "Describe the room.", settings=SETTINGS).token_ids
    assert len(texts) == len(streamed.token_ids)


def test_states_are_reused_and_a_full_streaming_cache_grows(tiny_engine, fused32, sample_frame, monkeypatch):
    from ivl_ros.model.backends import ort_fused

    decoder = fused32.backend.decoder
    first = fused32.ask(sample_frame, "Hi", settings=SETTINGS).token_ids
    states = dict(decoder.states)
    assert fused32.ask(sample_frame, "Hi", settings=SETTINGS).token_ids == first
    assert decoder.states.keys() == states.keys()
    assert all(decoder.states[k] is v for k, v in states.items())  # the same buffers served the second request
    # Streaming allocates prompt + STREAM_SLACK; with almost no slack the cache fills and must grow (re-prefill).
    monkeypatch.setattr(ort_fused, "STREAM_SLACK", 1)
    monkeypatch.setattr(ort_fused, "CACHE_QUANTUM", 8)
    grows = []
    original = ort_fused.FusedSession._grow
    monkeypatch.setattr(ort_fused.FusedSession, "_grow", lambda self: (grows.append(1), original(self)))
    settings = GenerationSettings(max_new_tokens=40)
    texts: list[str] = []
    grown = fused32.ask(None, "Describe the room.", settings=settings, on_text=texts.append)
    assert grown.token_ids == tiny_engine.ask(None, "Describe the room.", settings=settings).token_ids
    assert len(grown.token_ids) == 40 and len(grows) == 1  # capacity doubled once: room for the rest


def test_fused_session_refuses_rows_that_are_not_left_padded(fused32):
    ids = np.array([[5, 6, 7, 8]], np.int64)
    with pytest.raises(OptionError, match="row 0: the fused decoder takes left-padded rows"):
        fused32.backend.session(ids, np.array([[1, 1, 0, 1]]), None)
    with pytest.raises(OptionError, match="row 1: .* at least one token"):
        fused32.backend.session(np.vstack([ids, ids]), np.array([[1, 1, 1, 1], [0, 0, 0, 0]]), None)


def test_fp16_build_records_fused_graphs_and_their_checks(fp16_engines_dir):
    manifest = json.loads((fp16_engines_dir / "manifest.json").read_text())
    assert manifest["precision"]["decoder"] == manifest["precision"]["vision"] == "fp16"
    assert manifest["decoder"]["graph"] == "fused"
    vision, decoder = manifest["stages"]["vision_onnx"], manifest["stages"]["decoder_onnx"]
    print(f"fp16 vision vs torch fp32: {vision['check']['max_abs_diff_by_tiles']}; decoder: {decoder['check']}")
    assert vision["attention"] == "fused" and vision["fused_attention_nodes"] == 2  # one per ViT layer
    assert vision["output_dtype"] == "float16"
    assert vision["check"]["max_abs_diff"] < 1e-2 * vision["check"]["max_abs_value"]
    ops = decoder["op_counts"]
    assert ops["GroupQueryAttention"] == 2 and ops["SkipSimplifiedLayerNormalization"] == 4
    assert "Softmax" not in ops and "Concat" not in ops  # attention and cache handling are inside the fused op
    assert decoder["check"]["top1_agreement"] >= 0.9
    assert decoder["check"]["logits_max_abs_diff"] < 0.02 * decoder["check"]["max_abs_logit"]
    graph = onnx.load(str(fp16_engines_dir / "decoder.onnx"), load_external_data=False).graph
    kv = [i for i in graph.input if i.name.startswith("past_key_values.")]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in kv)
    tensorrt = manifest["stages"]["tensorrt"]
    if tensorrt["status"] == "done":  # TensorRT parses the plain-attention copy, not ONNX Runtime's fused op
        assert tensorrt["files"]["onnx"] == "vision_trt.onnx"
        plain = onnx.load(str(fp16_engines_dir / "vision_trt.onnx"), load_external_data=False).graph
        assert not any(node.domain == "com.microsoft" for node in plain.node)


def test_fp16_engines_agree_with_torch_fp32(tiny_checkpoint, tiny_engine, fp16_engines_dir, sample_frame):
    """fp16 rounding may flip a near-tied argmax of this random model, so agreement is measured; a wrong graph
    (rope, norm, cache slot) gives next to none, far below the floor."""
    engine = VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=fp16_engines_dir)
    same, cases, prefix, total = token_agreement(engine, tiny_engine, sample_frame, SETTINGS)
    print(f"fp16 engines vs torch fp32: {same}/{cases} identical, common prefix {prefix}/{total} tokens")
    assert same >= cases // 2 and prefix >= 0.6 * total


def test_a_rebuild_with_unchanged_inputs_needs_no_torch(tiny_checkpoint, fp16_engines_dir, tmp_path):
    """The Jetson recipe: ONNX files built elsewhere, the build rerun on the robot, where only new stages run."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import REPO
    from tests.export.conftest import MAX_TILES, copy_engines

    out = copy_engines(fp16_engines_dir, tmp_path / "copied")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        from export.build_engines import main
        sys.exit(main(["--model", {str(tiny_checkpoint)!r}, "--out", {str(out)!r}, "--max-tiles", "{MAX_TILES}",
                       "--precision", "fp16", "--trt", "auto"]))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("unchanged, skipped") >= 3  # vision, embedding, decoder (TensorRT too when built)
