"""finetune/lora.py's options: one set of defaults, the project's default-model rule, runnable without path edits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.options import build_parser, config_from_args
from ivl_ros.model.defaults import DEMO_MODEL_DIR

REPO = Path(__file__).resolve().parents[2]
BATCH_VARS = ("GPUS", "BATCH_SIZE", "PER_DEVICE_BATCH_SIZE", "GRADIENT_ACC", "IVL_MODEL")


@pytest.fixture
def clean_env(monkeypatch):
    for name in BATCH_VARS:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_upstream_lora_sh(clean_env):
    """Parsed with no flags, the config has upstream lora.sh's values (written out here independently)."""
    logged = []
    cfg = config_from_args(build_parser().parse_args(["--data", "habitat"]), log=logged.append)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.learning_rate, cfg.weight_decay) == (
        128,
        256,
        0.05,
        4e-5,
        0.01,
    )
    assert (cfg.warmup_ratio, cfg.epochs, cfg.max_dynamic_patch, cfg.max_seq_length) == (0.03, 1.0, 6, 4096)
    assert (cfg.gpus, cfg.batch_size, cfg.per_device_batch_size, cfg.gradient_acc) == (1, 16, 4, 4)
    # -1: decided by the device (4 workers on GPU, 0 on CPU); the option and the config agree on it.
    assert cfg.num_workers == -1
    assert (cfg.save_steps, cfg.save_total_limit, cfg.seed, cfg.output_dir) == (200, 2, 42, "runs/lora-habitat")
    assert cfg.gradient_checkpointing and cfg.group_by_length and not cfg.full


def test_every_config_field_is_an_option(clean_env):
    from dataclasses import fields

    from finetune.options import TrainConfig

    help_text = build_parser().format_help()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text or f"--no-{flag[2:]}" in help_text, f.name


def test_default_model_rule(clean_env, monkeypatch, tmp_path):
    logged = []
    args = build_parser().parse_args(["--data", "habitat"])
    assert Path(config_from_args(args, log=logged.append).model) == DEMO_MODEL_DIR
    assert len(logged) == 1 and "demo model" in logged[0]
    monkeypatch.setenv("IVL_MODEL", str(tmp_path))
    logged.clear()
    assert config_from_args(args, log=logged.append).model == str(tmp_path) and not logged
    args = build_parser().parse_args(["--data", "habitat", "--model", "/x/y"])
    assert config_from_args(args, log=logged.append).model == "/x/y"


@pytest.mark.parametrize(
    "flags,option",
    [
        (["--lora-r", "0"], "--lora-r"),
        (["--max-dynamic-patch", "41"], "--max-dynamic-patch"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--num-workers", "-2"], "--num-workers"),
        (["--device", "gpu0"], "--device"),
        (["--gpus", "0"], "--gpus"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_flags_are_refused_by_the_parser(flags, option, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--data", "habitat", *flags])
    assert info.value.code == 2 and option in capsys.readouterr().err


def test_missing_habitat_data_prints_the_recorder_command(tmp_path):
    meta = tmp_path / "data" / "habitat" / "meta.json"
    registry = tmp_path / "datasets.json"
    registry.write_text(json.dumps({"habitat": str(meta)}))
    env = dict(os.environ, IVL_DATASETS=str(registry))
    env.pop("IVL_MODEL", None)
    proc = subprocess.run(
        [sys.executable, "finetune/lora.py", "--data", "habitat"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    command = re.search(r"`(python -m habitat_sim_bridge\.record [^`]*)`", proc.stderr)
    assert command, proc.stderr
    words = command.group(1).split()
    assert words[words.index("--out") + 1] == str(meta.parent)
    assert words[words.index("--num-episodes") + 1] == "240" and words[words.index("--seed") + 1] == "7"


@pytest.mark.parametrize(
    "script", ["finetune/lora.py", "finetune/merge.py", "export/build_engines.py", "benchmarks/finetune_learns.py"]
)
def test_scripts_run_from_any_directory(script, tmp_path):
    """No sys.path edits: the scripts import finetune/, export/ and ivl_ros as installed packages."""
    proc = subprocess.run(
        [sys.executable, str(REPO / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_no_sys_path_edits_outside_tests():
    # The project's own folders, not build outputs (build/, install/: copies made by pip or colcon).
    generated = {"tests", "build", "install", "log", "dist", "runs", "data"}
    tops = [
        d
        for d in REPO.iterdir()
        if d.is_dir() and not d.name.startswith(".") and d.name not in generated and not d.name.endswith(".egg-info")
    ]
    offenders = [
        str(p.relative_to(REPO))
        for top in tops
        for p in top.rglob("*.py")
        if "sys.path.insert" in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []
