"""--llm-quant int8/int4: built on top of the fp32 engines (only the new stage runs), accuracy reported."""

from __future__ import annotations

import json

import pytest

from tests.export.conftest import build, copy_engines


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_decoder_captions(mode, tiny_checkpoint, tiny_engine, engines_dir, tmp_path, sample_frame,
                                    capsys):
    from ivl_ros.model.engine import VisionLanguageEngine

    before = json.loads((engines_dir / "manifest.json").read_text())["stages"]
    out = copy_engines(engines_dir, tmp_path / mode)
    manifest = build(tiny_checkpoint, out, "--llm-quant", mode)
    log = capsys.readouterr().err
    assert log.count("unchanged, skipped") == 4  # vision, TensorRT, embedding, decoder reused
    for stage in ("vision_onnx", "tensorrt", "embedding", "decoder_onnx"):
        assert manifest["stages"][stage]["key"] == before[stage]["key"]
    quant = manifest["stages"]["decoder_quant"]
    assert quant["status"] == "done" and quant["accuracy_level"] == 4
    assert quant["size"]["ratio"] < (0.5 if mode == "int8" else 0.4)

    engine = VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=out)
    images = [sample_frame, sample_frame[:100, :250], sample_frame[::-1, ::-1], sample_frame[:, :120],
              sample_frame[::2, ::3], 255 - sample_frame]
    same, prefix, total = 0, 0, 0
    for img in images:
        got, ref = engine.caption(img).token_ids, tiny_engine.caption(img).token_ids
        same += got == ref
        agree = [a == b for a, b in zip(got, ref, strict=False)] + [False]
        prefix += agree.index(False)
        total += len(ref)
    acc = quant["accuracy"]
    with capsys.disabled():
        print(f"\n{mode}: size x{quant['size']['ratio']:.2f} ({quant['size']['fp32_bytes']} -> "
              f"{quant['size']['quant_bytes']} B), captions identical to torch fp32 {same}/{len(images)} "
              f"(common prefix {prefix}/{total} tokens), "
              f"decoder greedy identical {acc['identical_sequences']}/{acc['prompts']}, token agreement "
              f"{acc['token_agreement']:.2f}, first-step logit drift {acc['first_step_logits_max_abs_diff']:.3f} "
              f"(logit std {acc['first_step_logits_std']:.2f})")
    # Exact caption agreement is reported, not asserted: random weights give near-tied logits (top-2 margins
    # far below the quantisation drift), so one flipped argmax changes the rest of a caption. What is
    # asserted for int8 is the size of the drift and the per-token agreement of the decoder check.
    if mode == "int8":
        assert acc["first_step_logits_max_abs_diff"] < 0.1 * acc["first_step_logits_std"]
        assert acc["token_agreement"] >= 0.6
