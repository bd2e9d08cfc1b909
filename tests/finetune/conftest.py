"""Finetune fixtures: a generated dataset of all four sample types and one shared training run."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory) -> Path:
    """16 lines cycling single image, pure text, multi-image, video (meta json path)."""
    from finetune.synthetic import make_caption_dataset

    return make_caption_dataset(tmp_path_factory.mktemp("data"), 16, seed=3, mixed=True)["meta"]


def train_args(meta: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(meta),
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--lora-r",
        "8",
        "--save-steps",
        "1000",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_checkpoint, mixed_data) -> Path:
    """A short LoRA run with a high learning rate (loss must fall within a few steps)."""
    from finetune.lora import main

    out = tmp_path_factory.mktemp("run") / "lora"
    rc = main(
        train_args(
            mixed_data,
            tiny_checkpoint,
            out,
            "--batch-size",
            "2",
            "--per-device-batch-size",
            "2",
            "--learning-rate",
            "5e-3",
            "--max-steps",
            "16",
            "--warmup-ratio",
            "0",
        )
    )
    assert rc == 0
    return out
