"""Build a frame source and the episode paths to step through from user options (shared by node and scripts)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from habitat_sim_bridge.episodes import episode_path, load_episodes, load_vlnce_gt
from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.geometry import quat_from_yaw, yaw_towards
from habitat_sim_bridge.sources.base import FrameSource

SOURCE_TYPES = ("procedural", "mesh", "habitat_sim", "replay", "trajectory")
Path_ = list[tuple[list[float], list[float]]]


@dataclass
class SourceOptions:
    source: str = "procedural"
    scene: str = ""  # .glb for mesh / habitat_sim
    episodes: str = ""  # habitat-lab episode file (.json/.json.gz)
    episodes_gt: str = ""  # VLN-CE {split}_gt.json.gz
    scenes_dir: str = ""
    replay_dir: str = ""
    trajectory: str = ""  # habitat-lab trajectory json
    images: list[str] = field(default_factory=list)
    width: int = 320
    height: int = 240
    hfov: float = 90.0
    seed: int = 0
    workdir: str = ""  # where the procedural source writes its scene


def complete_rotations(points: Sequence[tuple[Sequence[float], Sequence[float] | None]]) -> Path_:
    """Give every point a rotation: a missing one faces the next distinct point (or keeps the previous)."""
    out: Path_ = []
    prev = None
    for i, (pos, rot) in enumerate(points):
        if rot is None:
            nxt = next((p for p, _ in points[i + 1 :] if list(p) != list(pos)), None)
            rot = quat_from_yaw(yaw_towards(pos, nxt)) if nxt is not None else (prev or quat_from_yaw(0.0))
        out.append(([float(v) for v in pos], [float(v) for v in rot]))
        prev = out[-1][1]
    return out


def look_around(position: Sequence[float], steps: int = 36) -> Path_:
    return [([float(v) for v in position], quat_from_yaw(2 * math.pi * i / steps)) for i in range(steps)]


def _episode_paths(opts: SourceOptions, scene_filter: str | None) -> list[Path_]:
    ds = load_episodes(opts.episodes, scenes_dir=opts.scenes_dir or None)
    gt = load_vlnce_gt(opts.episodes_gt) if opts.episodes_gt else None
    paths = []
    for ep in ds.episodes:
        if scene_filter and Path(ep.scene_id).name != Path(scene_filter).name:
            continue  # one renderer per process: episodes of other scenes are left out
        paths.append(complete_rotations(episode_path(ep, gt)))
    if not paths:
        raise BridgeError(f"{opts.episodes}: no episodes for scene {scene_filter!r}")
    return paths


def build_source(opts: SourceOptions) -> tuple[FrameSource, list[Path_]]:
    """The frame source and the per-episode pose lists that ``opts`` describe."""
    if opts.source not in SOURCE_TYPES:
        raise BridgeError(f"source {opts.source!r} is not one of {SOURCE_TYPES}")
    if opts.source == "replay":
        from habitat_sim_bridge.sources.replay import ReplaySource

        src = ReplaySource.from_dir(opts.replay_dir)
        return src, [[(p.position, p.rotation) for p in src.poses]]
    if opts.source == "trajectory":
        from habitat_sim_bridge.sources.replay import ReplaySource

        src = ReplaySource.from_trajectory(opts.trajectory, opts.images, hfov=opts.hfov)
        return src, [[(p.position, p.rotation) for p in src.poses]]
    if opts.source == "procedural":
        from habitat_sim_bridge.scenegen import export_scene, generate_scene, make_objectnav_episodes
        from habitat_sim_bridge.sources.mesh import MeshSource

        if not opts.workdir:
            raise BridgeError("the procedural source needs a workdir to write its scene to")
        rng = np.random.default_rng(opts.seed)
        scene = generate_scene(f"procedural_{opts.seed}", rng)
        glb = export_scene(scene, opts.workdir, seed=opts.seed)
        eps, _ = make_objectnav_episodes(scene, glb.name, rng, 3)
        src = MeshSource(glb, width=opts.width, height=opts.height, hfov=opts.hfov)
        return src, [[(p["position"], p["rotation"]) for p in ep["shortest_paths"][0]] for ep in eps]
    scene = opts.scene
    if not scene and opts.episodes:
        first = load_episodes(opts.episodes, scenes_dir=opts.scenes_dir or None).episodes
        scene = first[0].scene_id if first else ""
    if not scene:
        raise BridgeError(f"source {opts.source!r} needs a scene (or an episodes file naming one)")
    if opts.source == "mesh":
        from habitat_sim_bridge.sources.mesh import MeshSource

        src = MeshSource(scene, width=opts.width, height=opts.height, hfov=opts.hfov)
    else:
        from habitat_sim_bridge.sources.habitat import HabitatSimSource

        src = HabitatSimSource(scene, width=opts.width, height=opts.height, hfov=opts.hfov)
    if opts.episodes:
        return src, _episode_paths(opts, scene)
    start = [0.0, 0.0, 0.0]
    grid = getattr(src, "navgrid", None)
    if grid is not None:
        cells = np.argwhere(grid.largest_component())
        start = grid.to_world(tuple(int(v) for v in cells[len(cells) // 2]))
    return src, [look_around(start)]
