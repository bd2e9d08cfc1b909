"""The `ivl` console contract: JSON shapes, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from ivl_ros.cli import main


@pytest.fixture(scope="module")
def frame_file(tmp_path_factory, sample_frame):
    path = tmp_path_factory.mktemp("img") / "frame.png"
    Image.fromarray(sample_frame).save(path)
    return path


def run_ivl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ivl_ros.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ask_json_contract_subprocess(tiny_checkpoint, frame_file, tiny_engine):
    proc = run_ivl(
        "ask",
        "--model",
        str(tiny_checkpoint),
        "--image",
        str(frame_file),
        "--question",
        "What is ahead?",
        "--max-tiles",
        "6",
        "--max-new-tokens",
        "16",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"answer", "token_ids", "prompt_ids", "num_tiles", "latency_ms"}
    assert doc["prompt_ids"][0] == 1 and doc["num_tiles"] == 7 and isinstance(doc["latency_ms"], float)
    same = tiny_engine.ask(frame_file, "What is ahead?", max_tiles=6, settings=_settings(16))
    assert doc["token_ids"] == same.token_ids and doc["answer"] == same.answer


def _settings(n, m=0):
    from ivl_ros.model.engine import GenerationSettings

    return GenerationSettings(max_new_tokens=n, min_new_tokens=m)


def test_caption_defaults(tiny_checkpoint, frame_file, tiny_engine, capsys):
    assert main(["caption", "--model", str(tiny_checkpoint), "--image", str(frame_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = tiny_engine.caption(frame_file)
    assert doc["token_ids"] == expected.token_ids and doc["num_tiles"] == 7 and 8 <= len(doc["token_ids"]) <= 30


def test_text_only_ask(tiny_checkpoint, capsys):
    assert main(["ask", "--model", str(tiny_checkpoint), "--question", "Hello", "--max-new-tokens", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_tiles"] == 0


def test_make_tiny_and_convert(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "t")]) == 0
    assert main(["convert", str(tmp_path / "t"), str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "config.json").is_file()
    for model in ("t", "c"):
        assert (
            main(["ask", "--model", str(tmp_path / model), "--question", "Hi", "--max-new-tokens", "6", "--json"]) == 0
        )
    a, b = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert a == {**b, "latency_ms": a["latency_ms"]}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["ask", "--model", "/nonexistent/ckpt", "--question", "hi"], "/nonexistent/ckpt"),
        (["caption", "--model", "{ckpt}", "--image", "/nonexistent.png"], "image file not found"),
        (
            ["ask", "--model", "{ckpt}", "--question", "hi", "--max-new-tokens", "4", "--min-new-tokens", "9"],
            "--min-new-tokens",
        ),
        (["ask", "--model", "{ckpt}", "--question", "hi", "--device", "tpu"], "device 'tpu'"),
        (["ask", "--model", "{ckpt}", "--question", "hi", "--max-tiles", "0"], "out of range"),
        (["tiles", "--size", "640by480"], "not WxH"),
    ],
)
def test_user_errors_exit_nonzero_without_traceback(args, fragment, tiny_checkpoint):
    args = [a.replace("{ckpt}", str(tiny_checkpoint)) for a in args]
    proc = run_ivl(*args)
    assert proc.returncode == 2
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


def test_zero_size_image_file(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    assert main(["caption", "--model", str(tiny_checkpoint), "--image", str(empty)]) == 2
    assert "0 bytes" in capsys.readouterr().err
