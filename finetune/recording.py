"""How to produce the named datasets of finetune/datasets.json that are recorded locally, for the error a user
sees when ``--data NAME`` points at data that does not exist yet."""

from __future__ import annotations

import shlex
from pathlib import Path

# The README's recording: 240 episodes of 6 frames, seed 7 (the demo model's recipe uses the same).
HABITAT_RECORD_ARGS = ("--num-episodes", "240", "--frames-per-episode", "6", "--seed", "7")
RECORDERS = {"habitat": ("python", "-m", "habitat_sim_bridge.record")}


def record_command(name: str, meta: Path) -> str | None:
    """The exact command that writes ``meta`` for the dataset ``name`` (None when it is not recorded here)."""
    if name not in RECORDERS:
        return None
    out = meta.parent
    try:
        out = out.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass  # outside the working directory: keep the absolute path
    return shlex.join([*RECORDERS[name], "--out", str(out), *HABITAT_RECORD_ARGS])


def missing_dataset_message(name: str, meta: Path, registry: Path) -> str:
    command = record_command(name, meta)
    how = f"record it first with `{command}`" if command else "record or download it first"
    return f"--data {name}: {meta} (from {registry.name}) does not exist yet; {how}, or pass --data PATH/TO/meta.json"
