"""--resume never unpickles, reports a damaged checkpoint by file and reason, and falls back to an intact one."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.finetune.conftest import train_args

COMMON = (
    "--batch-size",
    "2",
    "--per-device-batch-size",
    "2",
    "--learning-rate",
    "1e-3",
    "--save-steps",
    "1",
    "--save-total-limit",
    "3",
)


class _Marker:
    """Unpickling this calls open(path, "w"), i.e. creates the marker file: code run by a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state": _Marker(marker)}, protocol=2)


def _args(meta, model, out, *extra):
    args = train_args(meta, model, out, *COMMON, *extra)
    i = args.index("--save-steps")
    del args[i : i + 2]  # train_args' own --save-steps 1000; COMMON's comes later
    return args


def _losses(run: Path) -> list[float]:
    with open(run / "train_log.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory, tiny_checkpoint, mixed_data) -> Path:
    """Three steps with a checkpoint after each (checkpoint-1, -2, -3 kept) and the loss of each step."""
    from finetune.lora import main

    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(_args(mixed_data, tiny_checkpoint, out, "--max-steps", "3")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    return out


def _interrupted_copy(run: Path, dst: Path) -> Path:
    """The run as it was when stopped after step 2: checkpoint-1 and checkpoint-2 kept, no final outputs."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoint-3", "adapter_*", "run_stats.json"))
    return dst


def test_checkpoint_holds_no_pickle(three_steps):
    ck = three_steps / "checkpoint-2"
    names = {p.name for p in ck.iterdir()}
    assert names == {
        "trainable.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng.safetensors",
        "rng.json",
        "state.json",
    }
    for name in names:  # every file is JSON or safetensors (its header is a little-endian length + JSON)
        raw = (ck / name).read_bytes()
        if name.endswith(".json"):
            json.loads(raw)
        else:
            n = int.from_bytes(raw[:8], "little")
            assert json.loads(raw[8 : 8 + n])
    state = json.loads((ck / "state.json").read_text())
    assert state["global_step"] == 2 and set(state["files"]) == names - {"state.json"}


CHECKPOINT_FILES = [
    "trainable.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "rng.safetensors",
    "rng.json",
    "state.json",
]


@pytest.mark.parametrize("target", [*CHECKPOINT_FILES, "optimizer.pt", "scheduler.pt", "rng.pt", "old-format"])
def test_planted_pickle_never_runs(tmp_path, tiny_checkpoint, mixed_data, three_steps, target, capsys):
    from finetune.lora import main

    payload_check = tmp_path / "payload-works"
    pickle.loads(malicious_pickle(payload_check))  # the payload is live: unpickling it does create a file
    assert payload_check.exists()

    marker = tmp_path / "pwned"
    run = _interrupted_copy(three_steps, tmp_path / "run")
    shutil.rmtree(run / "checkpoint-1")
    ck = run / "checkpoint-2"
    if target == "old-format":  # a whole checkpoint of the old format: .pt pickles and a state.json without hashes
        for name in CHECKPOINT_FILES[:-1]:
            (ck / name).unlink()
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            (ck / name).write_bytes(malicious_pickle(marker))
        state = json.loads((ck / "state.json").read_text())
        del state["files"], state["format"]
        (ck / "state.json").write_text(json.dumps(state))
    else:
        (ck / target).write_bytes(malicious_pickle(marker))
    rc = main(_args(mixed_data, tiny_checkpoint, run, "--max-steps", "3", "--resume"))
    out = capsys.readouterr()
    assert not marker.exists(), "a pickle in the checkpoint was executed"
    if target.endswith(".pt"):  # a stray .pt next to a new-format checkpoint is simply never read
        assert rc == 0, out.err
        assert "resumed from" in out.out and str(ck) in out.out
        return
    assert rc == 2, out.out + out.err
    assert str(ck) in out.err
    if target == "old-format":
        assert "older ivl_ros" in out.err and "never loaded" in out.err
    else:
        assert target in out.err


DAMAGES = {
    "truncated trainable.safetensors": ("trainable.safetensors", lambda b: b[: len(b) // 2], "truncated"),
    "bit flip in trainable.safetensors": (
        "trainable.safetensors",
        lambda b: b[:-100] + bytes([b[-100] ^ 0x01]) + b[-99:],
        "sha256",
    ),
    "truncated optimizer state": ("optimizer.safetensors", lambda b: b[:1000], "truncated"),
    "garbage optimizer.json": ("optimizer.json", lambda b: b"\x00" * len(b), "sha256"),
    "truncated state.json": ("state.json", lambda b: b[: len(b) // 2], "state.json: unreadable"),
    "empty state.json": ("state.json", lambda b: b"", "state.json: unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_newest_checkpoint_falls_back(tmp_path, tiny_checkpoint, mixed_data, three_steps, damage, capsys):
    from finetune.lora import main

    name, corrupt, reason = DAMAGES[damage]
    run = _interrupted_copy(three_steps, tmp_path / "run")
    target = run / "checkpoint-2" / name
    target.write_bytes(corrupt(target.read_bytes()))
    assert main(_args(mixed_data, tiny_checkpoint, run, "--max-steps", "3", "--resume")) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("warning: cannot resume from"))
    assert str(target) in warning and reason in warning, warning
    assert f"resumed from {run / 'checkpoint-1'} at step 1" in out
    # Steps 2 and 3 replayed from checkpoint-1 equal the uninterrupted run, bit for bit.
    assert _losses(run) == _losses(three_steps)
    a = load_file(str(three_steps / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_intact_checkpoint_is_an_error(tmp_path, tiny_checkpoint, mixed_data, three_steps, capsys):
    from finetune.lora import main

    run = _interrupted_copy(three_steps, tmp_path / "run")
    for step in (1, 2):
        (run / f"checkpoint-{step}" / "rng.json").write_text("{")
    assert main(_args(mixed_data, tiny_checkpoint, run, "--max-steps", "3", "--resume")) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err
    assert str(run / "checkpoint-1" / "rng.json") in err and str(run / "checkpoint-2" / "rng.json") in err


def test_explicit_checkpoint_and_run_folder(tmp_path, tiny_checkpoint, mixed_data, three_steps, capsys):
    from finetune.lora import main

    run = _interrupted_copy(three_steps, tmp_path / "run")
    (run / "checkpoint-2" / "trainable.safetensors").write_bytes(b"")
    # An explicitly named damaged checkpoint is an error naming the file (no silent substitute) ...
    assert (
        main(
            _args(
                mixed_data, tiny_checkpoint, tmp_path / "a", "--max-steps", "3", "--resume", str(run / "checkpoint-2")
            )
        )
        == 2
    )
    assert f"{run / 'checkpoint-2' / 'trainable.safetensors'}: 0 bytes" in capsys.readouterr().err
    # ... while a run folder means its newest intact checkpoint.
    assert main(_args(mixed_data, tiny_checkpoint, tmp_path / "b", "--max-steps", "3", "--resume", str(run))) == 0
    assert f"resumed from {run / 'checkpoint-1'} at step 1" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["empty folder", "model folder", "file", "missing"])
def test_resume_path_that_is_not_a_checkpoint(tmp_path, tiny_checkpoint, mixed_data, what, capsys):
    from finetune.lora import main

    path = {
        "empty folder": tmp_path / "empty",
        "model folder": tiny_checkpoint,
        "file": tmp_path / "f.txt",
        "missing": tmp_path / "nope",
    }[what]
    if what == "empty folder":
        path.mkdir()
    elif what == "file":
        path.write_text("hello")
    rc = main(_args(mixed_data, tiny_checkpoint, tmp_path / "out", "--max-steps", "1", "--resume", str(path)))
    err = capsys.readouterr().err
    assert rc == 2 and f"--resume {path}: " in err
    assert ("does not exist" if what == "missing" else "not a training checkpoint") in err
    assert "Traceback" not in err


def test_tree_round_trip_of_optimizer_and_rng_state(tmp_path):
    """save_tree/load_tree restore the exact python objects torch's optimizers and RNGs produce."""
    import random

    import numpy as np

    from finetune.checkpoints import load_tree, rng_state, save_tree

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95))
    p.grad = torch.ones_like(p)
    opt.step()
    random.random(), np.random.rand(), torch.rand(1)
    tree = {"opt": opt.state_dict(), "rng": rng_state(), "odd": {3: (float("nan"), None)}}
    save_tree(tree, tmp_path, "t")
    back = load_tree(tmp_path, "t")
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert isinstance(back["opt"]["param_groups"][0]["betas"], tuple)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["rng"]["python"] == tree["rng"]["python"]
    np_a, np_b = back["rng"]["numpy"], tree["rng"]["numpy"]
    assert np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[1].dtype == np_b[1].dtype
    assert np_a[2:] == np_b[2:]
    assert torch.equal(back["rng"]["torch"], tree["rng"]["torch"])
    assert list(back["odd"]) == [3] and back["odd"][3][1] is None and back["odd"][3][0] != back["odd"][3][0]
