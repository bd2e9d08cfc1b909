"""--check-data: wrong types, deep nesting, non-finite numbers, bombs, undecodable images and non-regular files
are file:line problems (never a traceback, never a read of a device or FIFO); paths outside the root warn."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.finetune.conftest import REPO

GOOD = {
    "image": "ok.png",
    "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}],
}
CONV = GOOD["conversations"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds one tiny IDAT: a decompression bomb by its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def truncated_png(path: Path) -> None:
    Image.effect_noise((64, 64), 60).convert("RGB").save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # header intact: only a full decode finds it


# name -> (jsonl line as bytes, expected text in the problem)
LINES: dict[str, tuple[bytes, str]] = {
    "image is a number": (
        json.dumps({**GOOD, "image": 5}).encode(),
        "'image' must be a string or a list of strings, got int",
    ),
    "image is true": (
        json.dumps({**GOOD, "image": True}).encode(),
        "'image' must be a string or a list of strings, got bool",
    ),
    "image is an object": (json.dumps({**GOOD, "image": {"a": 1}}).encode(), "'image' must be"),
    "image list holds a number": (
        json.dumps({**GOOD, "image": ["ok.png", 5]}).encode(),
        "'image' list must hold non-empty strings, got 5",
    ),
    "video list holds a number": (
        json.dumps({"video": [5], "conversations": CONV}).encode(),
        "'video' list must hold non-empty strings, got 5",
    ),
    "video is a number": (
        json.dumps({"video": 7, "conversations": CONV}).encode(),
        "'video' must be a video file, a frame folder",
    ),
    "video list is empty": (json.dumps({"video": [], "conversations": CONV}).encode(), "'video' list is empty"),
    "nested 100k levels": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bad JSON: nested too deeply"),
    "NaN length": (json.dumps({**GOOD, "length": float("nan")}).encode(), "bad JSON: NaN is not a JSON number"),
    "Infinity length": (json.dumps({**GOOD, "length": float("inf")}).encode(), "Infinity is not a JSON number"),
    "1e400 length": (json.dumps(GOOD).encode()[:-1] + b', "length": 1e400}', "'length' must be a non-negative integer"),
    "float length": (json.dumps({**GOOD, "length": 2.5}).encode(), "'length' must be a non-negative integer"),
    "bomb 20000x20000": (json.dumps({**GOOD, "image": "bomb20k.png"}).encode(), "cannot read image bomb20k.png"),
    "bomb 100000x100000": (json.dumps({**GOOD, "image": "bomb100k.png"}).encode(), "cannot read image bomb100k.png"),
    "truncated image": (json.dumps({**GOOD, "image": "truncated.png"}).encode(), "cannot read image truncated.png"),
    "empty image file": (json.dumps({**GOOD, "image": "empty.png"}).encode(), "image file is empty (0 bytes)"),
    "FIFO": (json.dumps({**GOOD, "image": "fifo.png"}).encode(), "fifo.png is not a regular file"),
    "/dev/zero": (json.dumps({**GOOD, "image": "/dev/zero"}).encode(), "system pseudo-file"),
    "/proc/self/environ": (json.dumps({**GOOD, "image": "/proc/self/environ"}).encode(), "system pseudo-file"),
    "link to /proc": (json.dumps({**GOOD, "image": "environ.png"}).encode(), "system pseudo-file"),
}
GOOD_LINES = {
    "relative path outside the root": json.dumps({**GOOD, "image": "../outside/x.png"}).encode(),
    "absolute path outside the root": b"",  # filled in by the fixture (needs tmp_path)
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """One --check-data run (a subprocess with a deadline: opening the FIFO would block it) over every case."""
    base = tmp_path_factory.mktemp("defects")
    root = base / "data"
    root.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "ok.png")
    (root / "bomb20k.png").write_bytes(png_header_only(20_000, 20_000))
    (root / "bomb100k.png").write_bytes(png_header_only(100_000, 100_000))
    truncated_png(root / "truncated.png")
    (root / "empty.png").write_bytes(b"")
    os.mkfifo(root / "fifo.png")
    (root / "environ.png").symlink_to("/proc/self/environ")
    (base / "outside").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(base / "outside" / "x.png")
    lines = {**{k: v for k, (v, _) in LINES.items()}, **GOOD_LINES}
    lines["absolute path outside the root"] = json.dumps({**GOOD, "image": str(base / "outside" / "x.png")}).encode()
    names = ["good", *lines]
    body = [json.dumps(GOOD).encode(), *lines.values()]
    ann = root / "a.jsonl"
    ann.write_bytes(b"\n".join(body) + b"\n")
    meta = base / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "d": {
                    "root": str(root),
                    "annotation": str(ann),
                    "data_augment": False,
                    "repeat_time": 1,
                    "length": len(body),
                }
            }
        )
    )
    res = subprocess.run(
        [sys.executable, "finetune/lora.py", "--data", str(meta), "--check-data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line_of = {name: i for i, name in enumerate(names, 1)}
    return res, ann, line_of


def test_check_data_exits_1_without_traceback(checked):
    res, _, line_of = checked
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert f"{len(line_of) - len(LINES)} valid" in res.stderr  # the good line and the two outside-root lines


@pytest.mark.parametrize("case", list(LINES))
def test_each_defect_is_a_file_line_problem(checked, case):
    res, ann, line_of = checked
    prefix = f"{ann}:{line_of[case]}: "
    found = [o for o in res.stdout.splitlines() if o.startswith(prefix)]
    assert len(found) == 1 and LINES[case][1] in found[0], (case, found, res.stdout[-3000:])


def test_paths_outside_the_root_warn_but_stay_valid(checked):
    res, ann, line_of = checked
    warnings = [o for o in res.stdout.splitlines() if o.endswith("(warning)") and "outside the dataset root" in o]
    assert len(warnings) == 1, res.stdout
    first = line_of["relative path outside the root"]
    assert warnings[0].startswith(f"{ann}:{first}: ") and "2 lines of this file" in warnings[0]
    assert not any(o.startswith(f"{ann}:{first}: ") and "(warning)" not in o for o in res.stdout.splitlines())


META_CASES = {
    "repeat_time NaN": ('"repeat_time": NaN', "NaN is not a JSON number"),
    "repeat_time Infinity": ('"repeat_time": Infinity', "Infinity is not a JSON number"),
    "repeat_time 1e400": ('"repeat_time": 1e400', "repeat_time must be a number"),
    "repeat_time true": ('"repeat_time": true', "repeat_time must be a number"),
    "repeat_time 2.5": ('"repeat_time": 2.5', "repeat_time must be a number"),
    "max_dynamic_patch true": ('"repeat_time": 1, "max_dynamic_patch": true', "max_dynamic_patch must be a positive"),
    "max_dynamic_patch 2.5": ('"repeat_time": 1, "max_dynamic_patch": 2.5', "max_dynamic_patch must be a positive"),
    "length string": ('"repeat_time": 1, "length": "9"', "length must be a non-negative integer"),
    "length negative": ('"repeat_time": 1, "length": -1', "length must be a non-negative integer"),
    "data_augment string": ('"repeat_time": 1, "data_augment": "yes"', "data_augment must be true or false"),
    "nested meta": ('"repeat_time": 1, "x": ' + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_meta_numbers_are_validated(tmp_path, case, capsys):
    from finetune.lora import main

    fields, expected = META_CASES[case]
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD) + "\n")
    meta = tmp_path / "meta.json"
    entry = f'"root": "{tmp_path}", "annotation": "{tmp_path / "a.jsonl"}", {fields}'
    meta.write_text('{\n  "d": {' + entry + "}\n}\n")
    assert main(["--data", str(meta), "--check-data"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{meta}:") and expected in out[0], out


def test_header_only_check_misses_what_the_decode_finds(tmp_path):
    """Training starts with header checks (cheap); --check-data decodes, so a truncated image is caught there."""
    from finetune.data import check_data

    truncated_png(tmp_path / "t.png")
    (tmp_path / "a.jsonl").write_text(json.dumps({**GOOD, "image": "t.png"}) + "\n")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": str(tmp_path), "annotation": str(tmp_path / "a.jsonl")}}))
    assert not check_data(meta).problems
    (problem,) = check_data(meta, decode=True).problems
    assert problem.line == 1 and "cannot read image t.png" in problem.message
