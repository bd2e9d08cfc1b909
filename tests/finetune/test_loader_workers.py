"""Data-loader workers started from a fork server (how the trainer starts them on CUDA) build the same batches
as the training process itself: the dataset and its sample builder survive pickling, nothing else is needed."""

from __future__ import annotations

import torch

from finetune.data import check_data
from finetune.synthetic import make_caption_dataset
from finetune.trainer import ForwardSet, loader_context, sample_builder
from finetune.video import FrameSampling
from ivl_ros.model.spec import load_spec


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_fork_server_workers_build_the_same_batches(tiny_checkpoint, tmp_path):
    meta = make_caption_dataset(tmp_path / "d", 6, seed=4, mixed=True)["meta"]
    samples = check_data(meta).samples
    _, spec, tok = load_spec(tiny_checkpoint)
    build = sample_builder(tok, spec, 6, 4096, FrameSampling())
    forwards = [([[0, 1]], 2), ([[2, 3]], 2), ([[4, 5]], 2)]
    for packed in (False, True):
        data = ForwardSet(forwards, samples, build, tok.pad_id, 0, 0, packed=packed, pixel_dtype=torch.bfloat16)
        # batches as the trainer gets them without workers (the loader's conversion applied, in this process)
        here = list(torch.utils.data.DataLoader(data, batch_size=None, num_workers=0))
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=2, multiprocessing_context=loader_context("cuda", 2), timeout=300
        )
        there = list(loader)
        assert len(there) == len(here) == 3
        for a, b in zip(here, there, strict=True):
            _same(a, b)
        assert sum(b["num_samples"] for b in there) == 6


def test_workers_start_from_a_fork_server_only_on_cuda():
    assert loader_context("cuda", 8).get_start_method() == "forkserver"
    assert loader_context("cuda", 0) is None  # no workers: batches are built in the training process
    assert loader_context("cpu", 4) is None
