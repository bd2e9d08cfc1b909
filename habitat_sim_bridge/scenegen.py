"""Procedural indoor scenes: a room with walls, a textured floor and furniture of known categories, exported as a
y-up ``.glb`` with a ``.scene.json`` of ground truth and a navigability map, plus ObjectNav-v1 episodes for it.

Node names carry the instance id and category (``obj012_sofa_p3``) so any renderer can rebuild the semantic map.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from trimesh.visual.material import PBRMaterial

from habitat_sim_bridge import furniture as fu
from habitat_sim_bridge import textures
from habitat_sim_bridge.geometry import poses_along, quat_from_yaw, yaw_towards
from habitat_sim_bridge.navgrid import NavGrid

WALL_H = 2.6
AGENT_RADIUS = 0.2
TASK_CATEGORIES = fu.CATEGORIES

# Which furniture a room of each type gets: (category, how many, where): "wall" = back against a wall,
# "corner" = in a corner, "center" = free-standing.
ROOM_TYPES: dict[str, list[tuple[str, tuple[int, int], str]]] = {
    "living room": [
        ("sofa", (1, 1), "wall"),
        ("tv", (1, 1), "wall"),
        ("table", (0, 1), "center"),
        ("chair", (0, 2), "center"),
        ("plant", (1, 2), "corner"),
        ("lamp", (0, 1), "corner"),
        ("bookshelf", (0, 1), "wall"),
        ("cabinet", (0, 1), "wall"),
    ],
    "bedroom": [
        ("bed", (1, 1), "wall"),
        ("cabinet", (1, 2), "wall"),
        ("lamp", (0, 1), "corner"),
        ("plant", (0, 1), "corner"),
        ("chair", (0, 1), "center"),
        ("tv", (0, 1), "wall"),
    ],
    "dining room": [
        ("table", (1, 1), "center"),
        ("chair", (2, 4), "table"),
        ("cabinet", (0, 1), "wall"),
        ("plant", (1, 2), "corner"),
        ("lamp", (0, 1), "corner"),
        ("bookshelf", (0, 1), "wall"),
    ],
    "office": [
        ("table", (1, 1), "center"),
        ("chair", (1, 2), "table"),
        ("bookshelf", (1, 2), "wall"),
        ("cabinet", (0, 1), "wall"),
        ("plant", (0, 1), "corner"),
        ("lamp", (1, 1), "corner"),
        ("sofa", (0, 1), "wall"),
    ],
}
WALL_COLORS = {
    "white": (232, 230, 222),
    "beige": (222, 206, 176),
    "light blue": (176, 198, 222),
    "light green": (190, 214, 180),
    "pale yellow": (236, 224, 170),
    "light grey": (200, 200, 200),
    "pink": (232, 196, 196),
}
FLOORS = [
    ("planks", (176, 128, 82), "wooden"),
    ("planks", (120, 84, 54), "dark wooden"),
    ("tiles", (210, 210, 204), "tiled"),
    ("tiles", (190, 170, 140), "tiled"),
    ("carpet", (120, 120, 130), "grey carpet"),
    ("carpet", (150, 90, 80), "red carpet"),
]


@dataclass
class PlacedObject:
    instance_id: int
    category: str
    color: str
    position: list[float]  # floor centre
    yaw: float
    size: tuple[float, float, float]  # width, height, depth before rotation
    parts: list[fu.Part] = field(default_factory=list, repr=False)

    def footprint(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """World xmin, xmax, zmin, zmax (yaw is a multiple of 90 degrees)."""
        w, _, d = self.size
        if round(self.yaw / (math.pi / 2)) % 2:
            w, d = d, w
        x, z = self.position[0], self.position[2]
        return (x - w / 2 - margin, x + w / 2 + margin, z - d / 2 - margin, z + d / 2 + margin)

    @property
    def center(self) -> list[float]:
        return [self.position[0], self.size[1] / 2, self.position[2]]


@dataclass
class GeneratedScene:
    name: str
    room_type: str
    width: float  # x extent
    depth: float  # z extent
    wall_color: str
    floor: str
    objects: list[PlacedObject]
    structure: list[PlacedObject]  # floor, ceiling, walls (instance ids 1..3)
    navgrid: NavGrid

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "up": "y",
            "room_type": self.room_type,
            "size": [self.width, WALL_H, self.depth],
            "wall_color": self.wall_color,
            "floor": self.floor,
            "objects": [
                {
                    "instance_id": o.instance_id,
                    "category": o.category,
                    "color": o.color,
                    "position": [round(v, 4) for v in o.position],
                    "yaw": round(o.yaw, 4),
                    "size": list(o.size),
                }
                for o in self.structure + self.objects
            ],
            "navgrid": {
                "origin": list(self.navgrid.origin),
                "cell": self.navgrid.cell,
                "floor_y": 0.0,
                "file": f"{self.name}.navmap.npy",
            },
        }


# --------------------------------------------------------------------------- layout
def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _try_place(rng, built: fu.Built, mode: str, w: float, d: float, taken: list, anchor=None) -> tuple | None:
    """Sample a pose for ``built`` in a ``w`` x ``d`` room; None if no free spot was found."""
    bw, _, bd = built.size
    for _ in range(40):
        if mode in ("wall", "corner"):
            side = int(rng.integers(4))
            yaw = [0.0, math.pi, math.pi / 2, -math.pi / 2][side]  # front faces into the room
            along = (w if side < 2 else d) / 2 - bw / 2 - 0.05
            t = float(rng.choice([-along, along])) if mode == "corner" else float(rng.uniform(-along, along))
            off = bd / 2 + 0.02
            x, z = [(t, -d / 2 + off), (t, d / 2 - off), (-w / 2 + off, t), (w / 2 - off, t)][side]
        elif mode == "table" and anchor is not None:
            ax, az = anchor.position[0], anchor.position[2]
            fx0, fx1, fz0, fz1 = anchor.footprint()
            side = int(rng.integers(4))
            if side < 2:  # chairs along the long sides, facing the table centre
                x = float(rng.uniform(fx0 + 0.3, fx1 - 0.3)) if fx1 - fx0 > 0.6 else ax
                z = fz0 - bd / 2 + 0.08 if side == 0 else fz1 + bd / 2 - 0.08
            else:
                z = az
                x = fx0 - bw / 2 + 0.08 if side == 2 else fx1 + bw / 2 - 0.08
            yaw = math.atan2(ax - x, az - z)
            yaw = round(yaw / (math.pi / 2)) * (math.pi / 2)
        else:
            x = float(rng.uniform(-w / 2 + 1.0, w / 2 - 1.0))
            z = float(rng.uniform(-d / 2 + 1.0, d / 2 - 1.0))
            yaw = float(rng.integers(4)) * math.pi / 2
        obj = PlacedObject(0, "", built.color_word, [x, 0.0, z], yaw, built.size, built.parts)
        fp = obj.footprint()
        if fp[0] < -w / 2 or fp[1] > w / 2 or fp[2] < -d / 2 or fp[3] > d / 2:
            continue
        margin = 0.02 if mode == "table" else 0.35  # leave walking space between pieces
        # chairs may tuck under their table; nothing else may touch
        if any(
            _overlaps(obj.footprint(margin), o_fp) for is_table, o_fp in taken if not (mode == "table" and is_table)
        ):
            continue
        return obj
    return None


def generate_scene(name: str, rng: np.random.Generator, room_type: str | None = None) -> GeneratedScene:
    """Lay out one furnished room; deterministic for a given generator state."""
    room_type = room_type or list(ROOM_TYPES)[int(rng.integers(len(ROOM_TYPES)))]
    w, d = round(float(rng.uniform(4.5, 7.0)), 2), round(float(rng.uniform(4.0, 6.0)), 2)
    wall_color = list(WALL_COLORS)[int(rng.integers(len(WALL_COLORS)))]
    floor = FLOORS[int(rng.integers(len(FLOORS)))]
    objects: list[PlacedObject] = []
    taken: list[tuple[bool, tuple]] = []  # (is a table chairs may touch, footprint)
    table_obj = None
    next_id = 10
    for category, (lo, hi), mode in ROOM_TYPES[room_type]:
        for _ in range(int(rng.integers(lo, hi + 1))):
            built = fu.BUILDERS[category](rng)
            obj = _try_place(rng, built, mode, w, d, taken, anchor=table_obj)
            if obj is None:
                continue
            obj.instance_id, obj.category = next_id, category
            next_id += 1
            objects.append(obj)
            taken.append((category == "table", obj.footprint()))
            if category == "table":
                table_obj = obj
    # a few extras from any category keep rooms from looking alike
    for _ in range(int(rng.integers(0, 3))):
        category = fu.CATEGORIES[int(rng.integers(len(fu.CATEGORIES)))]
        if category in ("bed", "sofa", "table"):
            continue
        obj = _try_place(rng, fu.BUILDERS[category](rng), "wall" if category != "plant" else "corner", w, d, taken)
        if obj is not None:
            obj.instance_id, obj.category = next_id, category
            next_id += 1
            objects.append(obj)
            taken.append((False, obj.footprint()))
    structure = _structure(w, d, wall_color, floor, rng)
    return GeneratedScene(name, room_type, w, d, wall_color, floor[2], objects, structure, build_navgrid(w, d, objects))


def _structure(w: float, d: float, wall_color: str, floor: tuple, rng: np.random.Generator) -> list[PlacedObject]:
    wc = WALL_COLORS[wall_color]
    t = 0.1
    floor_part = fu.Part(fu.box(w, 0.02, d, 0, -0.02, 0), floor[1], floor[0])
    ceiling = fu.Part(fu.box(w, 0.02, d, 0, WALL_H, 0), (240, 240, 238))
    walls = [
        fu.Part(fu.box(w + 2 * t, WALL_H, t, 0, 0, -d / 2 - t / 2), wc),
        fu.Part(fu.box(w + 2 * t, WALL_H, t, 0, 0, d / 2 + t / 2), wc),
        fu.Part(fu.box(t, WALL_H, d, -w / 2 - t / 2, 0, 0), wc),
        fu.Part(fu.box(t, WALL_H, d, w / 2 + t / 2, 0, 0), wc),
    ]
    # skirting boards make the wall/floor edge readable in flat lighting
    skirt = tuple(int(c * 0.7) for c in wc)
    walls += [fu.Part(fu.box(w, 0.08, 0.02, 0, 0, s * (d / 2 - 0.01)), skirt) for s in (-1, 1)]
    walls += [fu.Part(fu.box(0.02, 0.08, d, s * (w / 2 - 0.01), 0, 0), skirt) for s in (-1, 1)]
    # a window or a door on one wall, so walls differ
    win_side = int(rng.integers(4))
    win_x = float(rng.uniform(-0.3, 0.3)) * (w if win_side < 2 else d)
    glass = (170, 200, 230)
    if win_side < 2:
        z = (-1 if win_side == 0 else 1) * (d / 2 - 0.005)
        walls.append(fu.Part(fu.box(1.2, 1.0, 0.02, win_x, 1.0, z), glass))
    else:
        x = (-1 if win_side == 2 else 1) * (w / 2 - 0.005)
        walls.append(fu.Part(fu.box(0.02, 1.0, 1.2, x, 1.0, win_x), glass))
    return [
        PlacedObject(1, "floor", floor[2], [0, 0, 0], 0.0, (w, 0.0, d), [floor_part]),
        PlacedObject(2, "ceiling", "white", [0, 0, 0], 0.0, (w, 0.0, d), [ceiling]),
        PlacedObject(3, "wall", wall_color, [0, 0, 0], 0.0, (w, WALL_H, d), walls),
    ]


def build_navgrid(w: float, d: float, objects: list[PlacedObject], cell: float = 0.1) -> NavGrid:
    """Free cells: inside the walls and at least the agent radius from every footprint."""
    nx, nz = int(w / cell), int(d / cell)
    origin = (-(nx - 1) * cell / 2, -(nz - 1) * cell / 2)
    xs = origin[0] + np.arange(nx) * cell
    zs = origin[1] + np.arange(nz) * cell
    gx, gz = np.meshgrid(xs, zs)
    free = (np.abs(gx) < w / 2 - AGENT_RADIUS) & (np.abs(gz) < d / 2 - AGENT_RADIUS)
    for obj in objects:
        x0, x1, z0, z1 = obj.footprint()
        dx = np.maximum(np.maximum(x0 - gx, gx - x1), 0)
        dz = np.maximum(np.maximum(z0 - gz, gz - z1), 0)
        free &= np.hypot(dx, dz) > AGENT_RADIUS
    return NavGrid(free=free, origin=origin, cell=cell)


# --------------------------------------------------------------------------- export
def _uv_box_projection(mesh: trimesh.Trimesh, tile: float) -> np.ndarray:
    """Planar UVs per face by its dominant normal axis, ``tile`` metres per texture repeat."""
    normals = np.repeat(mesh.face_normals, 3, axis=0)
    verts = mesh.vertices[mesh.faces.reshape(-1)]
    axis = np.abs(normals).argmax(axis=1)
    u = np.where(axis == 0, verts[:, 2], verts[:, 0])
    v = np.where(axis == 1, verts[:, 2], verts[:, 1])
    return np.stack([u, v], axis=1) / tile


def _unshared(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """One vertex per face corner, so per-face colours and UVs do not bleed across edges."""
    faces = np.arange(len(mesh.faces) * 3).reshape(-1, 3)
    return trimesh.Trimesh(vertices=mesh.vertices[mesh.faces.reshape(-1)], faces=faces, process=False)


def _group_meshes(parts: list[fu.Part], tex_cache: dict, rng: np.random.Generator) -> list[trimesh.Trimesh]:
    """Merge an object's parts: all plain-coloured parts into one vertex-coloured mesh, textured parts into one
    mesh per texture. Software rendering cost grows with draw calls, and a bookshelf alone has ~100 parts."""
    out = []
    plain = [p for p in parts if p.texture is None]
    if plain:
        meshes = [_unshared(p.mesh) for p in plain]
        colors = np.concatenate(
            [np.tile([*p.color, 255], (len(m.vertices), 1)) for p, m in zip(plain, meshes, strict=True)]
        )
        merged = trimesh.util.concatenate(meshes)
        merged.visual = trimesh.visual.ColorVisuals(merged, vertex_colors=colors.astype(np.uint8))
        out.append(merged)
    keys = sorted({(p.texture, p.color) for p in parts if p.texture is not None})
    for key in keys:
        if key not in tex_cache:
            tex_cache[key] = textures.make_texture(key[0], rng, key[1])
        group = [_unshared(p.mesh) for p in parts if (p.texture, p.color) == key]
        merged = trimesh.util.concatenate(group)
        uv = _uv_box_projection(merged, 1.0 if key[0] in ("planks", "tiles", "carpet") else 0.6)
        mat = PBRMaterial(baseColorTexture=tex_cache[key], metallicFactor=0.0, roughnessFactor=0.9)
        merged.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
        out.append(merged)
    return out


def to_trimesh_scene(scene: GeneratedScene, seed: int = 0) -> trimesh.Scene:
    out = trimesh.Scene()
    tex_rng = np.random.default_rng(seed)
    cache: dict = {}
    for obj in scene.structure + scene.objects:
        tf = trimesh.transformations.rotation_matrix(obj.yaw, (0, 1, 0))
        tf[:3, 3] = obj.position
        for k, mesh in enumerate(_group_meshes(obj.parts, cache, tex_rng)):
            name = f"obj{obj.instance_id:03d}_{obj.category}_p{k}"
            out.add_geometry(mesh, node_name=name, geom_name=name, transform=tf)
    return out


def export_scene(scene: GeneratedScene, out_dir: str | Path, seed: int = 0) -> Path:
    """Write ``<name>.glb``, ``<name>.scene.json`` and ``<name>.navmap.npy``; returns the .glb path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    glb = out_dir / f"{scene.name}.glb"
    glb.write_bytes(to_trimesh_scene(scene, seed).export(file_type="glb"))
    (out_dir / f"{scene.name}.scene.json").write_text(json.dumps(scene.to_json(), indent=1))
    np.save(out_dir / f"{scene.name}.navmap.npy", scene.navgrid.free)
    return glb


# --------------------------------------------------------------------------- episodes
def follow_waypoints(
    waypoints: list[list[float]], start_yaw: float, final_yaw: float | None, turn_deg: float = 30.0
) -> list[dict]:
    """Discrete-agent states (turn in ``turn_deg`` steps, then move) along waypoints, as shortest-path points.

    Each point is the state *before* its action (1 forward, 2 left, 3 right, 0 stop), like habitat-lab's.
    """
    turn = math.radians(turn_deg)
    yaw, pos = start_yaw, waypoints[0]
    points: list[dict] = []

    def turn_to(target: float) -> None:
        nonlocal yaw
        while True:
            diff = (target - yaw + math.pi) % (2 * math.pi) - math.pi
            if abs(diff) < turn / 2:
                return
            act = 2 if diff > 0 else 3  # turn_left raises yaw (counter-clockwise from above)
            points.append({"position": pos, "rotation": quat_from_yaw(yaw), "action": act})
            yaw += turn if act == 2 else -turn

    for nxt in waypoints[1:]:
        if nxt == pos:
            continue
        turn_to(yaw_towards(pos, nxt))
        points.append({"position": pos, "rotation": quat_from_yaw(yaw), "action": 1})
        pos = nxt
    if final_yaw is not None:
        turn_to(final_yaw)
    points.append({"position": pos, "rotation": quat_from_yaw(yaw), "action": 0})
    return [
        {
            "position": [round(v, 4) for v in p["position"]],
            "rotation": [round(v, 6) for v in p["rotation"]],
            "action": p["action"],
        }
        for p in points
    ]


def _footprint_distance(obj: PlacedObject, xs, zs):
    """Floor distance from world points (``xs``, ``zs``: floats or arrays) to ``obj``'s footprint, 0 inside it."""
    x0, x1, z0, z1 = obj.footprint()
    return np.hypot(np.maximum(np.maximum(x0 - xs, xs - x1), 0), np.maximum(np.maximum(z0 - zs, zs - z1), 0))


def _view_cells(scene: GeneratedScene, obj: PlacedObject, reach: np.ndarray, max_dist: float = 1.0) -> set:
    g = scene.navgrid
    rows, cols = np.nonzero(reach)
    xs = g.origin[0] + cols * g.cell
    zs = g.origin[1] + rows * g.cell
    dist = _footprint_distance(obj, xs, zs)
    return {(int(r), int(c)) for r, c, dd in zip(rows, cols, dist, strict=True) if dd <= max_dist}


def make_objectnav_episodes(scene: GeneratedScene, scene_id: str, rng: np.random.Generator, count: int) -> tuple:
    """ObjectNav-v1 episodes and goals for ``scene`` -> (episodes, goals_by_category) as habitat-lab JSON dicts."""
    reach = scene.navgrid.largest_component()
    basename = scene_id.rsplit("/", 1)[-1]
    goals_by_category: dict[str, list] = {}
    views: dict[int, set] = {}
    for obj in scene.objects:
        cells = _view_cells(scene, obj, reach)
        if not cells:
            continue
        views[obj.instance_id] = cells
        vp = sorted(cells)[:: max(1, len(cells) // 4)][:4]
        goals_by_category.setdefault(f"{basename}_{obj.category}", []).append(
            {
                "object_id": obj.instance_id,
                "object_name": f"{obj.category}_{obj.instance_id}",
                "object_category": obj.category,
                "position": [round(v, 4) for v in obj.center],
                "radius": None,
                "room_id": "0",
                "room_name": scene.room_type,
                "view_points": [
                    {
                        "agent_state": {
                            "position": [round(v, 4) for v in scene.navgrid.to_world(c)],
                            "rotation": quat_from_yaw(yaw_towards(scene.navgrid.to_world(c), obj.center)),
                        },
                        "iou": None,
                    }
                    for c in vp
                ],
            }
        )
    categories = sorted({k.rsplit("_", 1)[1] for k in goals_by_category})
    free_cells = list(zip(*np.nonzero(reach), strict=True))
    episodes = []
    attempts = 0
    while len(episodes) < count and categories and free_cells and attempts < count * 20:
        attempts += 1
        category = categories[int(rng.integers(len(categories)))]
        targets = [o for o in scene.objects if o.category == category and o.instance_id in views]
        goal_cells = set().union(*(views[o.instance_id] for o in targets))
        start = tuple(int(v) for v in free_cells[int(rng.integers(len(free_cells)))])
        path = scene.navgrid.shortest_path(start, goal_cells)
        if path is None or len(path) < 12:  # at least ~1 m to walk, so episodes are not trivial
            continue
        waypoints = scene.navgrid.path_to_waypoints(path)
        # The goal the path ends at: the path stops at the first cell within view distance of any target, so
        # the target whose footprint is nearest that cell is the one it reached (ties: the lower instance id).
        end_x, _, end_z = scene.navgrid.to_world(path[-1])
        nearest = min(targets, key=lambda o: (float(_footprint_distance(o, end_x, end_z)), o.instance_id))
        start_yaw = float(rng.uniform(-math.pi, math.pi))
        final_yaw = yaw_towards(waypoints[-1], nearest.center)
        points = follow_waypoints(waypoints, start_yaw, final_yaw)
        geo = float(sum(np.linalg.norm(np.subtract(b, a)) for a, b in zip(waypoints, waypoints[1:], strict=False)))
        episodes.append(
            {
                "episode_id": str(len(episodes)),
                "scene_id": scene_id,
                "scene_dataset_config": "default",
                "start_position": points[0]["position"],
                "start_rotation": points[0]["rotation"],
                "object_category": category,
                "goals": [],
                "shortest_paths": [points],
                "info": {
                    "geodesic_distance": round(geo, 4),
                    "euclidean_distance": round(float(np.linalg.norm(np.subtract(waypoints[-1], waypoints[0]))), 4),
                    "closest_goal_object_id": nearest.instance_id,
                },
            }
        )
    return episodes, goals_by_category


def objectnav_dataset_json(per_scene: list[tuple[list, dict]]) -> dict:
    """Merge per-scene episodes into one ObjectNav-v1 file with the category maps habitat-lab expects."""
    episodes, goals = [], {}
    for eps, g in per_scene:
        episodes += eps
        goals.update(g)
    cats = {c: i for i, c in enumerate(TASK_CATEGORIES)}
    for i, ep in enumerate(episodes):
        ep["episode_id"] = str(i)
    return {
        "category_to_task_category_id": cats,
        "category_to_scene_annotation_category_id": dict(cats),
        "goals_by_category": goals,
        "episodes": episodes,
    }


__all__ = [
    "GeneratedScene",
    "PlacedObject",
    "export_scene",
    "generate_scene",
    "make_objectnav_episodes",
    "objectnav_dataset_json",
    "poses_along",
    "to_trimesh_scene",
]
