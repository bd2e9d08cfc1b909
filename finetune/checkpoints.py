"""Resumable training checkpoints: written to a temp folder and renamed (atomic), the last K kept.

A checkpoint holds the trainable tensors, the optimizer and scheduler state, every rank's RNG state and
the position in the data order, so that ``--resume`` replays exactly the steps an uninterrupted run does.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "checkpoint-"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in Path(output_dir).glob(PREFIX + "*") if p.is_dir() and p.name[len(PREFIX):].isdigit()
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(output_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    rng_states: list[dict], state: dict, keep: int) -> Path:
    """Rank 0 only. Writes ``checkpoint-<step>`` atomically, then deletes all but the newest ``keep``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_states, tmp / "rng.pt")
    # state.json last: a folder without it is never taken for a checkpoint.
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """Everything save_checkpoint wrote. The .pt files are our own (optimizer/RNG state), hence weights_only off."""
    path = Path(path)
    return {
        "trainable": load_file(str(path / "trainable.safetensors"), device=str(device)),
        "optimizer": torch.load(path / "optimizer.pt", map_location=device, weights_only=False),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=False),
        "rng": torch.load(path / "rng.pt", weights_only=False),
        "state": json.loads((path / "state.json").read_text()),
    }
