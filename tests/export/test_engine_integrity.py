"""Broken engines directories are refused with "rebuild the engines" naming the file; corruption is rebuilt.

Three layers, each tested on its own: the sha256 of every artifact (any damage to a built file), the checks of
what each artifact must be (a damaged file whose hash was recomputed, i.e. a hand-edited directory), and the
manifest's structure and paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ivl_ros.model.backends import engines
from ivl_ros.model.backends.engines import EngineError
from ivl_ros.model.engine import GenerationSettings, VisionLanguageEngine
from tests.export.conftest import build, copy_engines

ARTIFACTS = {
    "vision.onnx": "vision_onnx",
    "vision.onnx.data": "vision_onnx",
    "decoder.onnx": "decoder_onnx",
    "decoder.onnx.data": "decoder_onnx",
    "embed_tokens.npy": "embedding",
}


def truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def garbage(raw: bytes) -> bytes:
    return bytes(np.random.default_rng(0).integers(0, 256, len(raw), dtype=np.uint8))


def empty(raw: bytes) -> bytes:
    return b""


def bit_flips(raw: bytes) -> bytes:
    """4000 bytes flipped in the middle: same size, so a size check cannot see it."""
    mid = len(raw) // 2
    n = min(4000, len(raw) // 4)
    return raw[:mid] + bytes(b ^ 0xFF for b in raw[mid : mid + n]) + raw[mid + n :]


DAMAGES = {"truncated": truncate, "garbage": garbage, "empty": empty, "bit flips": bit_flips}


def load(tiny_checkpoint, out):
    return VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=out)


def refused(tiny_checkpoint, out, *needles: str) -> str:
    with pytest.raises(EngineError) as info:
        load(tiny_checkpoint, out)
    message = str(info.value)
    assert "rebuild the engines" in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def rehash(out: Path, stage: str, rel: str) -> None:
    """What a hand-edited directory looks like: the manifest's hash and size updated to the damaged file."""
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / rel).read_bytes()
    manifest["stages"][stage]["sha256"][rel] = hashlib.sha256(data).hexdigest()
    manifest["stages"][stage]["sizes"][rel] = len(data)
    (out / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(out: Path, change) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("rel", list(ARTIFACTS))
def test_damaged_artifact_fails_its_hash(tiny_checkpoint, engines_dir, tmp_path, rel, damage):
    out = copy_engines(engines_dir, tmp_path / "e")
    (out / rel).write_bytes(DAMAGES[damage]((out / rel).read_bytes()))
    refused(tiny_checkpoint, out, str(out / rel), "sha256 mismatch")


# Damage with the hash recomputed: the checks of what each file must be still refuse it.
REHASHED = {
    "truncated vision.onnx": ("vision.onnx", truncate, "ONNX Runtime cannot load it"),
    "garbage vision.onnx": ("vision.onnx", garbage, "ONNX Runtime cannot load it"),
    "empty vision.onnx": ("vision.onnx", empty, "ONNX Runtime cannot load it"),
    "truncated vision.onnx.data": ("vision.onnx.data", truncate, "ONNX Runtime cannot load it"),
    "empty vision.onnx.data": ("vision.onnx.data", empty, "ONNX Runtime cannot load it"),
    "truncated decoder.onnx": ("decoder.onnx", truncate, "ONNX Runtime cannot load it"),
    "garbage decoder.onnx": ("decoder.onnx", garbage, "ONNX Runtime cannot load it"),
    "empty decoder.onnx": ("decoder.onnx", empty, "ONNX Runtime cannot load it"),
    "truncated decoder.onnx.data": ("decoder.onnx.data", truncate, "ONNX Runtime cannot load it"),
    "empty decoder.onnx.data": ("decoder.onnx.data", empty, "ONNX Runtime cannot load it"),
    "truncated embed_tokens.npy": ("embed_tokens.npy", truncate, "not a readable .npy table"),
    "garbage embed_tokens.npy": ("embed_tokens.npy", garbage, "not a readable .npy table"),
    "empty embed_tokens.npy": ("embed_tokens.npy", empty, "not a readable .npy table"),
}


@pytest.mark.parametrize("case", list(REHASHED))
def test_damaged_artifact_with_matching_hash_is_still_refused(tiny_checkpoint, engines_dir, tmp_path, case):
    rel, damage, reason = REHASHED[case]
    out = copy_engines(engines_dir, tmp_path / "e")
    (out / rel).write_bytes(damage((out / rel).read_bytes()))
    rehash(out, ARTIFACTS[rel], rel)
    shown = rel.removesuffix(".data")  # ORT names the graph whose external data is broken
    refused(tiny_checkpoint, out, shown, reason)


@pytest.mark.parametrize("shape", [(10, 7), "hidden", "vocab", "float64", "3-D"])
def test_wrong_shape_embedding_is_refused(tiny_checkpoint, engines_dir, tmp_path, shape):
    out = copy_engines(engines_dir, tmp_path / "e")
    table = np.load(out / "embed_tokens.npy")
    bad = {
        "hidden": lambda: table[:, :-1],
        "vocab": lambda: table[:-5],
        "float64": lambda: table.astype(np.float64),
        "3-D": lambda: table[None],
    }.get(shape, lambda: np.zeros(shape, np.float32))()
    np.save(out / "embed_tokens.npy", np.ascontiguousarray(bad))
    rehash(out, "embedding", "embed_tokens.npy")
    refused(tiny_checkpoint, out, str(out / "embed_tokens.npy"), "embedding table is")


def test_swapped_stage_entries_are_refused(tiny_checkpoint, engines_dir, tmp_path):
    out = copy_engines(engines_dir, tmp_path / "whole")  # whole stage records swapped: hashes match, graphs do not
    edit_manifest(
        out,
        lambda m: m["stages"].update(vision_onnx=m["stages"]["decoder_onnx"], decoder_onnx=m["stages"]["vision_onnx"]),
    )
    refused(tiny_checkpoint, out, str(out / "decoder.onnx"), "not the vision graph")

    out = copy_engines(engines_dir, tmp_path / "names")  # only the file names swapped

    def swap(m):
        v, d = m["stages"]["vision_onnx"]["files"], m["stages"]["decoder_onnx"]["files"]
        v["file"], d["file"] = d["file"], v["file"]

    edit_manifest(out, swap)
    refused(tiny_checkpoint, out, str(out / "decoder.onnx"), "records no hash for it")

    out = copy_engines(engines_dir, tmp_path / "files")  # the files themselves swapped on disk
    for name in ("vision.onnx", "vision.onnx.data"):
        os.replace(out / name, out / f"tmp-{name}")
    for a, b in (("decoder.onnx", "vision.onnx"), ("decoder.onnx.data", "vision.onnx.data")):
        os.replace(out / a, out / b)
        os.replace(out / f"tmp-{b}", out / a)
    refused(tiny_checkpoint, out, "sha256 mismatch")


MANIFEST_CASES = {
    "a list": (lambda raw: b"[1, 2, 3]", "must be a JSON object, found list"),
    "not UTF-8": (lambda raw: raw[:20] + b"\xff\xfe" + raw[22:], "not UTF-8 text"),
    "not JSON": (lambda raw: raw[:-10], "not valid JSON"),
    "empty": (lambda raw: b"", "not valid JSON"),
    "nested 100k": (lambda raw: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
}
MANIFEST_EDITS = {
    "missing vision": (lambda m: m.pop("vision"), "'vision' must be an object"),
    "non-integer profile": (
        lambda m: m["vision"]["tile_profile"].update(max="13"),
        "vision.tile_profile.max must be a positive integer",
    ),
    "float profile": (
        lambda m: m["vision"]["tile_profile"].update(min=1.5),
        "vision.tile_profile.min must be a positive integer",
    ),
    "profile min > max": (lambda m: m["vision"]["tile_profile"].update(min=20), "min <= opt <= max"),
    "stages a list": (lambda m: m.update(stages=[]), "'stages' must be an object"),
    "stage a string": (lambda m: m["stages"].update(vision_onnx="done"), "stages.vision_onnx must be an object"),
    "file a number": (lambda m: m["stages"]["vision_onnx"]["files"].update(file=5), "must be a string"),
    "old format": (lambda m: m.update(format=1), "manifest format 1"),
    "no hashes": (lambda m: m["stages"]["vision_onnx"].pop("sha256"), "records no content hashes"),
    "path outside": (
        lambda m: m["stages"]["vision_onnx"]["files"].update(file="../fp32/vision.onnx"),
        "not a file inside",
    ),
    "hash entry outside": (
        lambda m: m["stages"]["vision_onnx"]["sha256"].update({"../x": "0" * 64}),
        "which is not inside",
    ),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_broken_manifest_bytes(tiny_checkpoint, engines_dir, tmp_path, case):
    change, reason = MANIFEST_CASES[case]
    out = copy_engines(engines_dir, tmp_path / "e")
    (out / "manifest.json").write_bytes(change((out / "manifest.json").read_bytes()))
    refused(tiny_checkpoint, out, str(out / "manifest.json"), reason)


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_broken_manifest_structure(tiny_checkpoint, engines_dir, tmp_path, case):
    change, reason = MANIFEST_EDITS[case]
    out = copy_engines(engines_dir, tmp_path / "e")
    edit_manifest(out, change)
    refused(tiny_checkpoint, out, reason)


def test_absolute_path_to_the_checkpoint_is_not_followed(tiny_checkpoint, engines_dir, tmp_path):
    out = copy_engines(engines_dir, tmp_path / "e")
    weights = str(next(Path(tiny_checkpoint).glob("*.safetensors")))
    edit_manifest(out, lambda m: m["stages"]["embedding"]["files"].update(file=weights))
    refused(tiny_checkpoint, out, weights, "not a file inside")


def test_symlink_out_of_the_directory_is_not_followed(tiny_checkpoint, engines_dir, tmp_path):
    out = copy_engines(engines_dir, tmp_path / "e")
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(out / "embed_tokens.npy", outside)  # even identical content: it is not inside the engines folder
    (out / "embed_tokens.npy").unlink()
    (out / "embed_tokens.npy").symlink_to(outside)
    refused(tiny_checkpoint, out, "embed_tokens.npy", "not a file inside")


def test_verification_is_cached_by_file_identity(tiny_checkpoint, engines_dir, tmp_path, monkeypatch):
    out = copy_engines(engines_dir, tmp_path / "e")
    (out / engines.VERIFIED_CACHE).unlink(missing_ok=True)  # copied along: start cold
    hashed = []
    real = engines.file_sha256
    monkeypatch.setattr(engines, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    load(tiny_checkpoint, out)
    assert sorted(hashed) == sorted(ARTIFACTS)  # cold: every artifact the onnx backend uses is hashed once
    hashed.clear()
    load(tiny_checkpoint, out)
    assert hashed == []  # warm: nothing re-read
    (out / "embed_tokens.npy").write_bytes((out / "embed_tokens.npy").read_bytes())  # same bytes, new mtime
    load(tiny_checkpoint, out)
    assert hashed == ["embed_tokens.npy"]


def test_bit_flip_is_detected_at_load_and_rebuilt(tiny_checkpoint, engines_dir, tmp_path, sample_frame, capsys):
    """The acceptance case: 4000 flipped bytes in vision.onnx.data, same size."""
    out = copy_engines(engines_dir, tmp_path / "e")
    settings = GenerationSettings(max_new_tokens=12)
    want = load(tiny_checkpoint, out).ask(sample_frame, "What is in front of the robot?", settings=settings).token_ids
    data = out / "vision.onnx.data"
    size = data.stat().st_size
    data.write_bytes(bit_flips(data.read_bytes()))
    assert data.stat().st_size == size
    refused(tiny_checkpoint, out, str(data), "sha256 mismatch")
    capsys.readouterr()
    manifest = build(tiny_checkpoint, out)
    log = capsys.readouterr().err
    vision_line = next(line for line in log.splitlines() if "vision ONNX" in line and "max abs diff" in line)
    assert "skipped" not in vision_line, log  # the vision stage ran again
    assert manifest["stages"]["vision_onnx"]["status"] == "done"
    got = load(tiny_checkpoint, out).ask(sample_frame, "What is in front of the robot?", settings=settings).token_ids
    assert got == want


def test_builder_rebuilds_over_a_broken_manifest(tiny_checkpoint, engines_dir, tmp_path, capsys):
    """ "Rebuild the engines" must work whatever the manifest holds: here bytes that are not UTF-8."""
    out = copy_engines(engines_dir, tmp_path / "e")
    (out / "manifest.json").write_bytes(b"\xff\xfe[not json")
    capsys.readouterr()
    manifest = build(tiny_checkpoint, out, "--trt", "off")
    assert "unchanged, skipped" not in capsys.readouterr().err  # nothing trusted from the broken manifest
    assert manifest["format"] == engines.FORMAT_VERSION and manifest["stages"]["decoder_onnx"]["status"] == "done"
    load(tiny_checkpoint, out)
