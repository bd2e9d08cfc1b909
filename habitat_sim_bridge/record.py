"""CLI: ``python -m habitat_sim_bridge.record --out DIR --num-episodes N --frames-per-episode K --seed S``."""

from __future__ import annotations

import argparse
import sys

from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.recorder import DEFAULT_OUT, RecordConfig, record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m habitat_sim_bridge.record", description=__doc__)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--num-episodes", type=int, default=8, help="training episodes to render")
    p.add_argument("--frames-per-episode", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--heldout-episodes",
        type=int,
        default=None,
        help="episodes on separate held-out scenes (default: max(2, num_episodes // 4); 0 = none)",
    )
    p.add_argument("--episodes-per-scene", type=int, default=3)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--coco-refs", type=int, default=4, help="reference captions per held-out image")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = RecordConfig(
        out=a.out,
        num_episodes=a.num_episodes,
        frames_per_episode=a.frames_per_episode,
        seed=a.seed,
        heldout_episodes=a.heldout_episodes,
        episodes_per_scene=a.episodes_per_scene,
        width=a.width,
        height=a.height,
        coco_refs=a.coco_refs,
        progress=not a.no_progress,
    )
    try:
        paths = record(cfg)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
