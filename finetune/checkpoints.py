"""Resumable training checkpoints: written to a temp folder and renamed (atomic), the last K kept.

A checkpoint holds the trainable tensors, the optimizer and scheduler state, every rank's RNG state and
the position in the data order, so that ``--resume`` replays exactly the steps an uninterrupted run does.

Nothing in a checkpoint is ever unpickled: a training folder is what people copy between machines and
download, and a pickle runs code when it is loaded. Tensors go to safetensors, everything else to JSON
(``save_tree``/``load_tree``, a tagged encoding that round-trips tuples, int dict keys and numpy arrays).
``state.json`` is written last and records the size and sha256 of every other file, so a truncated or
bit-flipped file is reported by name and ``--resume`` falls back to the newest intact checkpoint.
Checkpoints of the old format (``optimizer.pt``, ``scheduler.pt``, ``rng.pt``) are refused unread.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from finetune.data import DataError
from ivl_ros.model.backends.engines import file_sha256  # the one chunked sha256 of a file

PREFIX = "checkpoint-"
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
TREES = ("optimizer", "scheduler", "rng")  # each: <name>.json (+ <name>.safetensors when it holds tensors)
PICKLE_FILES = ("optimizer.pt", "scheduler.pt", "rng.pt")  # the old format; never opened
FORMAT = 2


class CheckpointDamaged(DataError):
    """A checkpoint folder that cannot be resumed from; the message names the file and the reason."""


@dataclass
class Checkpoint:
    path: Path
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: list[dict]
    state: dict


# -- JSON + safetensors trees --------------------------------------------------------------------------


def _encode(value, tensors: dict[str, torch.Tensor], where: str):
    if isinstance(value, torch.Tensor):
        tensors[where] = value.detach().cpu().contiguous()
        return {"__tensor__": where}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        return {
            "__items__": [
                [_encode(k, tensors, f"{where}.key{i}"), _encode(v, tensors, f"{where}.{i}")]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    raise TypeError(
        f"{where}: cannot store a {type(value).__name__} in a checkpoint (tensors, numbers, strings, "
        "lists, tuples and dicts only)"
    )


def _decode(value, tensors: dict[str, torch.Tensor], where: str):
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        key = value["__tensor__"]
        if key not in tensors:
            raise ValueError(f"{where}: refers to tensor {key!r}, which the .safetensors file does not hold")
        return tensors[key]
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__float__" in value:
        if value["__float__"] not in ("nan", "inf", "-inf"):
            raise ValueError(f"{where}: bad float {value['__float__']!r}")
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, where) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value["__items__"]}
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def save_tree(tree, folder: Path, name: str) -> list[str]:
    """Write ``tree`` as ``<name>.json`` (+ ``<name>.safetensors`` if it holds tensors); returns the file names."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors, name)
    written = []
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
        written.append(f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps({"tree": encoded, "tensors": bool(tensors)}) + "\n")
    written.append(f"{name}.json")
    return written


def load_tree(folder: Path, name: str):
    """The tree ``save_tree`` wrote; raises ValueError/OSError/SafetensorError on a damaged file."""
    doc = _load_json(folder / f"{name}.json")
    if not isinstance(doc, dict) or "tree" not in doc:
        raise ValueError(f"{name}.json: not a saved state tree")
    tensors = load_file(str(folder / f"{name}.safetensors")) if doc.get("tensors") else {}
    return _decode(doc["tree"], tensors, name)


def _load_json(path: Path):
    def refuse_constant(text: str):
        raise ValueError(f"{text} is not allowed")

    return json.loads(path.read_bytes().decode("utf-8"), parse_constant=refuse_constant)


# -- RNG ---------------------------------------------------------------------------------------------


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


# -- checkpoints -------------------------------------------------------------------------------------


def step_of(path: Path) -> int | None:
    name = Path(path).name
    return int(name[len(PREFIX) :]) if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders with a state.json (a folder without one was never finished), oldest first."""
    found = [
        p
        for p in Path(output_dir).glob(PREFIX + "*")
        if p.is_dir() and step_of(p) is not None and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=step_of)


def save_checkpoint(
    output_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    rng_states: list[dict],
    state: dict,
    keep: int,
) -> Path:
    """Rank 0 only. Writes ``checkpoint-<step>`` atomically, then deletes all but the newest ``keep``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE_FILE))
    files = [TRAINABLE_FILE]
    files += save_tree(optimizer.state_dict(), tmp, "optimizer")
    files += save_tree(scheduler.state_dict(), tmp, "scheduler")
    files += save_tree(rng_states, tmp, "rng")
    record = {
        "format": FORMAT,
        **state,
        "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": file_sha256(tmp / f)} for f in files},
    }
    # state.json last: a folder without it is never taken for a checkpoint.
    (tmp / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_state(path: Path) -> dict:
    file = path / STATE_FILE
    old = [n for n in PICKLE_FILES if (path / n).exists()]
    if not file.is_file():
        raise CheckpointDamaged(
            _old_format(path, old) if old else f"{file}: missing (the checkpoint was never finished)"
        )
    try:
        state = _load_json(file)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointDamaged(f"{file}: unreadable ({exc})") from None
    if isinstance(state, dict) and "files" not in state and old:
        raise CheckpointDamaged(_old_format(path, old))
    problem = _state_problem(state)
    if problem:
        raise CheckpointDamaged(f"{file}: {problem}")
    return state


def _state_problem(state) -> str | None:
    if not isinstance(state, dict):
        return "not a JSON object"
    if state.get("format") != FORMAT:
        return f"checkpoint format {state.get('format')!r}, this ivl_ros reads format {FORMAT}"
    for key in ("global_step", "epoch", "step_in_epoch", "seed"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key!r} must be a non-negative integer, got {value!r}"
    batch = state.get("batch")
    if not (isinstance(batch, list) and len(batch) == 3 and all(isinstance(b, int) and b > 0 for b in batch)):
        return f"'batch' must be [GPUS, PER_DEVICE_BATCH_SIZE, GRADIENT_ACC], got {batch!r}"
    files = state.get("files")
    expected = {TRAINABLE_FILE, "optimizer.json", "scheduler.json", "rng.json"}
    if (
        not isinstance(files, dict)
        or not expected <= set(files)
        or not all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()
        )
    ):
        return f"'files' must list {sorted(expected)} with their bytes and sha256"
    return None


def _old_format(path: Path, old: list[str]) -> str:
    return (
        f"{path}: written by an older ivl_ros ({', '.join(old)}: pickle files, which are never loaded because "
        "unpickling can run code). Start a fresh run, or resume it with the ivl_ros version that wrote it"
    )


def _verify_files(path: Path, files: dict) -> None:
    for name, info in files.items():
        if Path(name).name != name:
            raise CheckpointDamaged(f"{path / STATE_FILE}: file name {name!r} is not a plain name in the folder")
        f = path / name
        if not f.is_file():
            raise CheckpointDamaged(f"{f}: missing")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointDamaged(f"{f}: {size} bytes, but {info['bytes']} were written (truncated or replaced)")
        if file_sha256(f) != info["sha256"]:
            raise CheckpointDamaged(f"{f}: content differs from what was written (sha256 mismatch)")


def load_checkpoint(path: Path) -> Checkpoint:
    """Everything save_checkpoint wrote, on the CPU, after checking every file against state.json.

    Raises CheckpointDamaged naming the file and what is wrong; pickle files are never opened.
    """
    path = Path(path)
    state = _read_state(path)
    _verify_files(path, state["files"])
    parts = {}
    for name in TREES:
        try:
            parts[name] = load_tree(path, name)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError, SafetensorError) as exc:
            raise CheckpointDamaged(f"{path / (name + '.json')}: unreadable ({exc})") from None
    try:
        trainable = load_file(str(path / TRAINABLE_FILE))
    except (OSError, SafetensorError) as exc:
        raise CheckpointDamaged(f"{path / TRAINABLE_FILE}: unreadable ({exc})") from None
    if not isinstance(parts["rng"], list) or not all(isinstance(r, dict) for r in parts["rng"]):
        raise CheckpointDamaged(f"{path / 'rng.json'}: expected one RNG state per rank")
    return Checkpoint(path, trainable, parts["optimizer"], parts["scheduler"], parts["rng"], state)


def resume_candidates(resume: str, output_dir: Path) -> list[Path]:
    """Checkpoints to try for ``--resume``, newest first: ``last`` means ``output_dir``; a path is one checkpoint
    folder, or a run folder holding them. Anything else is a DataError."""
    if resume == "last":
        return list_checkpoints(output_dir)[::-1]
    path = Path(resume)
    if not path.exists():
        raise DataError(f"--resume {path}: does not exist")
    if path.is_dir() and (
        step_of(path) is not None or (path / STATE_FILE).exists() or any((path / n).exists() for n in PICKLE_FILES)
    ):
        return [path]
    found = list_checkpoints(path) if path.is_dir() else []
    if not found:
        raise DataError(
            f"--resume {path}: not a training checkpoint (expected a {PREFIX}N folder written by "
            "finetune/lora.py, or a run folder that holds them)"
        )
    return found[::-1]


def check_fits(
    ck: Checkpoint, trainable: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler, world: int
) -> None:
    """CheckpointDamaged unless ``ck`` holds exactly this run's trainable tensors (shapes included), the state of
    this optimizer and LR schedule, and one RNG state per rank. Nothing is loaded here."""
    where = ck.path / TRAINABLE_FILE
    if set(ck.trainable) != set(trainable):
        missing, extra = sorted(set(trainable) - set(ck.trainable)), sorted(set(ck.trainable) - set(trainable))
        raise CheckpointDamaged(
            f"{where}: does not hold this run's trainable tensors (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, param in trainable.items():
        if ck.trainable[name].shape != param.shape:
            raise CheckpointDamaged(
                f"{where}: {name} has shape {tuple(ck.trainable[name].shape)}, the model {tuple(param.shape)}"
            )
    _check_optimizer_state(ck.optimizer, optimizer, ck.path / "optimizer.json")
    fresh = scheduler.state_dict()
    if (
        not isinstance(ck.scheduler, dict)
        or set(ck.scheduler) != set(fresh)
        or ck.scheduler.get("lr_lambdas") != fresh.get("lr_lambdas")
    ):
        raise CheckpointDamaged(f"{ck.path / 'scheduler.json'}: not the state of this run's LR schedule")
    if len(ck.rng) != world:
        raise CheckpointDamaged(f"{ck.path / 'rng.json'}: {len(ck.rng)} RNG state(s) for {world} rank(s)")


def _check_optimizer_state(saved, optimizer: torch.optim.Optimizer, where: Path) -> None:
    """The saved optimizer state must describe this optimizer's parameters (shapes included)."""
    fresh = optimizer.state_dict()
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if (
        not isinstance(groups, list)
        or not isinstance(saved.get("state"), dict)
        or [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups]
        != [len(g["params"]) for g in fresh["param_groups"]]
        or any(set(g) != set(f) for g, f in zip(groups, fresh["param_groups"], strict=True))
    ):
        raise CheckpointDamaged(f"{where}: not the state of this run's optimizer (parameter groups differ)")
    shapes = {}
    for g, group in zip(groups, optimizer.param_groups, strict=True):
        shapes.update(zip(g["params"], (p.shape for p in group["params"]), strict=True))
    for pid, entry in saved["state"].items():
        if pid not in shapes or not isinstance(entry, dict):
            raise CheckpointDamaged(f"{where}: state for unknown parameter {pid!r}")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor) or (value.ndim and value.shape != shapes[pid]):
                raise CheckpointDamaged(
                    f"{where}: parameter {pid} {key!r} does not fit (expected a tensor of shape {tuple(shapes[pid])})"
                )
