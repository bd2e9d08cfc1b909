"""Entry point: ``python finetune/lora.py --data habitat`` (see --help)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from finetune.data import DataError, check_data, resolve_data
from finetune.options import build_parser, config_from_args
from ivl_ros.errors import IvlError


def check_only(data: str) -> int:
    meta = resolve_data(data)
    report = check_data(meta, decode=True)
    for p in report.problems:
        print(p)
    for w in report.warnings:
        print(f"{w} (warning)")
    n_files = len(report.datasets)
    print(
        f"checked {meta}: {n_files} dataset(s), {report.lines_read} line(s), {len(report.samples)} valid, "
        f"{len(report.problems)} problem(s)",
        file=sys.stderr,
    )
    return 1 if report.problems else 0


def relaunch_under_torchrun(gpus: int) -> None:
    """GPUS > 1: replace this process by torchrun running this same script once per GPU."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        str(Path(__file__).resolve()),
        *sys.argv[1:],
    ]
    print("launching: " + " ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check_data:
            return check_only(args.data)
        cfg = config_from_args(args)
        if cfg.gpus > 1 and "LOCAL_RANK" not in os.environ:
            relaunch_under_torchrun(cfg.gpus)
        from finetune.trainer import run_training

        return run_training(cfg)
    except (IvlError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
