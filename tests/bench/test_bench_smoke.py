"""CPU smoke run of the benchmark on the tiny architecture: files written, every backend measured, no timings."""

from __future__ import annotations

import json

import pytest

from benchmarks.command import main


@pytest.mark.slow
def test_bench_runs_on_cpu_and_writes_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IVL_FUSED_DECODE", "0")  # a switch of the measured path: the reported command carries it
    monkeypatch.setenv("IVL_MODEL", "/not/used/by/random-init")  # not one: left out
    argv = [
        "--random-init",
        "tiny",
        "--device",
        "cpu",
        "--backends",
        "hf-baseline,torch,torch-fast,onnx",
        "--tiles",
        "1,3",
        "--decode-tokens",
        "4",
        "--decode-batch",
        "2",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--slow-reps",
        "1",
        "--out",
        str(tmp_path),
        "--tag",
        "smoke",
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert [b["name"] for b in results["backends"]] == ["hf-baseline", "torch", "torch-fast"]
    assert "onnx" in results["skipped"]
    for b in results["backends"]:
        assert not b["errors"], b["errors"]
        assert set(b["vision_ms"]) == {"1", "3"}
        assert b["decode_b1"]["new_tokens"] and b["decode_b2"]["batch"] == 2  # rates: noise on a tiny CPU run
        assert b["caption_ms"]["median"] > 0
    assert results["command"].startswith("IVL_FUSED_DECODE=0 python -m benchmarks --random-init tiny")
    assert "prefill_mode" not in results["backends"][2]  # no first-token graph on the CPU
    md = (tmp_path / "smoke.md").read_text()
    assert "| metric | target | hf-baseline | torch | torch-fast |" in md
    assert (tmp_path / "smoke.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
