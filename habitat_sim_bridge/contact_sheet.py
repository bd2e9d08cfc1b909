"""Contact sheet of generated frames with their captions: ``python -m habitat_sim_bridge.contact_sheet``.

Renders a few held-out-style scenes from scratch (nothing is read from a previous recording) so the picture in
docs/ always shows what the current generator and caption templates produce.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

DEFAULT_OUT = "docs/habitat_contact_sheet.png"


def make_sheet(out: str | Path, seed: int = 0, rows: int = 4, cols: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display here or in CI
    import matplotlib.pyplot as plt
    import numpy as np

    from habitat_sim_bridge import captions as cap
    from habitat_sim_bridge.scenegen import export_scene, generate_scene, make_objectnav_episodes
    from habitat_sim_bridge.sources.mesh import MeshSource

    rng = np.random.default_rng([seed, 7])
    tiles = []
    room_types = ["living room", "bedroom", "dining room", "office"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rows):
            scene = generate_scene(f"sheet_{i}", rng, room_type=room_types[i % len(room_types)])
            glb = export_scene(scene, tmp, seed=seed + i)
            eps, _ = make_objectnav_episodes(scene, glb.name, rng, cols)
            with MeshSource(glb) as src:
                for j in range(cols):
                    points = eps[j % len(eps)]["shortest_paths"][0]
                    # prefer a pose that shows furniture: the sheet is for judging objects, not bare walls
                    for p in [points[len(points) // 2], points[-1], points[0]]:
                        frame = src.render(p["position"], p["rotation"])
                        if cap.visible_objects(frame):
                            break
                    text = cap.captions(frame, np.random.default_rng([seed, i, j]), scene.room_type)[0]
                    tiles.append((frame.rgb, f"{scene.room_type}: {text}"))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.4, rows * 3.3))
    for ax, (img, text) in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title("\n".join(textwrap.wrap(text, 40)), fontsize=7.5, loc="left")
    fig.suptitle(
        "habitat_sim_bridge: procedural scenes rendered on CPU (OSMesa) with ground-truth captions", fontsize=10
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m habitat_sim_bridge.contact_sheet", description=__doc__)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=4)
    a = p.parse_args(argv)
    print(make_sheet(a.out, a.seed, a.rows, a.cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
