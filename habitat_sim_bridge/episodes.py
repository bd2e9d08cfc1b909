"""habitat-lab episode datasets (PointNav-v1, ObjectNav-v1, R2R VLN, VLN-CE ``_gt``) without habitat-lab.

habitat-lab cannot be imported without habitat-sim, so this module parses the same JSON itself and mirrors the
loader behaviour users rely on: ``data/scene_datasets/`` prefix replacement by ``scenes_dir``, ObjectNav goals
resolved from ``goals_by_category`` (keyed ``<scene basename>_<category>``), ObjectNav ``episode_id`` overwritten
with the list index, bare-int shortest-path actions wrapped into points. Schema violations raise
:class:`EpisodeFormatError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from habitat_sim_bridge.errors import EpisodeFormatError

DEFAULT_SCENE_PATH_PREFIX = "data/scene_datasets/"
PathLike = str | Path
Vec3 = list[float]
Quat = list[float]  # [x, y, z, w], habitat-lab's order


@dataclass
class ShortestPathPoint:
    position: Vec3 | None = None
    rotation: Quat | None = None
    action: int | str | None = None


@dataclass
class NavigationGoal:
    position: Vec3
    radius: float | None = None


@dataclass
class AgentState:
    position: Vec3
    rotation: Quat | None = None


@dataclass
class ObjectViewLocation:
    agent_state: AgentState
    iou: float | None = None


@dataclass
class ObjectGoal:
    object_id: int | str
    position: Vec3 | None = None
    radius: float | None = None
    object_name: str | None = None
    object_name_id: int | None = None
    object_category: str | None = None
    room_id: str | None = None
    room_name: str | None = None
    view_points: list[ObjectViewLocation] = field(default_factory=list)


@dataclass
class InstructionData:
    instruction_text: str
    instruction_tokens: list[int] = field(default_factory=list)


@dataclass
class NavigationEpisode:
    """A PointNav episode; also the base of the other episode kinds."""

    episode_id: str
    scene_id: str
    start_position: Vec3
    start_rotation: Quat
    goals: list[Any] = field(default_factory=list)
    start_room: str | None = None
    shortest_paths: list[list[ShortestPathPoint]] | None = None
    info: dict | None = None
    scene_dataset_config: str = "default"
    additional_obj_config_paths: list[str] = field(default_factory=list)


@dataclass
class ObjectGoalNavEpisode(NavigationEpisode):
    object_category: str = ""

    @property
    def goals_key(self) -> str:
        """The ``goals_by_category`` key of this episode (habitat-lab uses the scene file's basename)."""
        return f"{os.path.basename(self.scene_id)}_{self.object_category}"


@dataclass
class VLNEpisode(NavigationEpisode):
    trajectory_id: int = 0
    instruction: InstructionData | None = None
    reference_path: list[Vec3] = field(default_factory=list)


@dataclass
class EpisodeDataset:
    """Episodes of one kind plus the dataset-level fields of that format."""

    kind: str  # "pointnav" | "objectnav" | "vln"
    episodes: list[NavigationEpisode] = field(default_factory=list)
    content_scenes_path: str | None = None
    category_to_task_category_id: dict[str, int] = field(default_factory=dict)
    category_to_scene_annotation_category_id: dict[str, int] = field(default_factory=dict)
    goals_by_category: dict[str, list[ObjectGoal]] = field(default_factory=dict)
    instruction_vocab: dict | None = None

    @property
    def scene_ids(self) -> list[str]:
        return sorted({ep.scene_id for ep in self.episodes})


# --------------------------------------------------------------------------- validation helpers
_KIND_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
}


class _Checker:
    """Type checks that name the file and the JSON path of the offending field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, expected: str, got: Any) -> EpisodeFormatError:
        shown = json.dumps(got)[:60] if _jsonable(got) else type(got).__name__
        return EpisodeFormatError(f"{self.source}: field '{where}' must be {expected}, got {shown}")

    def get(
        self,
        obj: dict,
        key: str,
        where: str,
        kind: type,
        required: bool = True,
        default: Any = None,
    ) -> Any:
        if key not in obj or (obj[key] is None and not required):
            if required:
                raise EpisodeFormatError(
                    f"{self.source}: field '{where}.{key}' is missing; expected {_KIND_NAMES.get(kind, kind.__name__)}"
                )
            return default
        value = obj[key]
        self.expect(value, kind, f"{where}.{key}")
        return value

    def expect(self, value: Any, kind: type, where: str) -> None:
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise self.fail(where, _KIND_NAMES.get(kind, kind.__name__), value)

    def vec(self, value: Any, n: int, where: str) -> list[float]:
        if (
            not isinstance(value, list)
            or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(where, f"a list of {n} numbers", value)
        return [float(v) for v in value]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- file io
def read_json(path: PathLike) -> Any:
    """Read ``.json`` or ``.json.gz`` (gzip detected by magic bytes, not by name)."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFormatError(f"{path}: episode file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise EpisodeFormatError(f"{path}: corrupt gzip data ({exc})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EpisodeFormatError(f"{path}: not valid JSON ({exc})") from None


def write_json(data: Any, path: PathLike) -> Path:
    """Write JSON, gzip-compressed when the name ends in ``.gz`` (mtime 0 so outputs are reproducible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":")).encode("utf-8")
    if path.suffix == ".gz":
        with (
            open(path, "wb") as fh,
            gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz,
        ):
            gz.write(text)
    else:
        path.write_bytes(text)
    return path


# --------------------------------------------------------------------------- parsing
def _resolve_scene(scene_id: str, scenes_dir: str | None) -> str:
    if scenes_dir is None:
        return scene_id
    scene_id = scene_id.removeprefix(DEFAULT_SCENE_PATH_PREFIX)
    return os.path.join(scenes_dir, scene_id)


def _path_points(ck: _Checker, raw: Any, where: str) -> list[list[ShortestPathPoint]] | None:
    if raw is None:
        return None
    ck.expect(raw, list, where)
    paths = []
    for i, path in enumerate(raw):
        ck.expect(path, list, f"{where}[{i}]")
        points = []
        for j, point in enumerate(path):
            w = f"{where}[{i}][{j}]"
            if point is None or isinstance(point, (int, str)) and not isinstance(point, bool):
                points.append(ShortestPathPoint(action=point))  # ObjectNav ships bare action ids
                continue
            ck.expect(point, dict, w)
            pos = point.get("position")
            rot = point.get("rotation")
            points.append(
                ShortestPathPoint(
                    position=None if pos is None else ck.vec(pos, 3, f"{w}.position"),
                    rotation=None if rot is None else ck.vec(rot, 4, f"{w}.rotation"),
                    action=point.get("action"),
                )
            )
        paths.append(points)
    return paths


def _base_fields(ck: _Checker, ep: dict, where: str, scenes_dir: str | None, id_kind: type = str) -> dict:
    ck.expect(ep, dict, where)
    episode_id = ep.get("episode_id")
    if episode_id is None or isinstance(episode_id, bool) or not isinstance(episode_id, (str, int)):
        raise ck.fail(f"{where}.episode_id", "a string or integer", episode_id)
    info = ck.get(ep, "info", where, dict, required=False)
    return {
        "episode_id": str(episode_id) if id_kind is str else episode_id,
        "scene_id": _resolve_scene(ck.get(ep, "scene_id", where, str), scenes_dir),
        "start_position": ck.vec(ck.get(ep, "start_position", where, list), 3, f"{where}.start_position"),
        "start_rotation": ck.vec(ck.get(ep, "start_rotation", where, list), 4, f"{where}.start_rotation"),
        "start_room": ck.get(ep, "start_room", where, str, required=False),
        "shortest_paths": _path_points(ck, ep.get("shortest_paths"), f"{where}.shortest_paths"),
        "info": info,
        "scene_dataset_config": ck.get(ep, "scene_dataset_config", where, str, required=False, default="default"),
        "additional_obj_config_paths": list(ck.get(ep, "additional_obj_config_paths", where, list, False, [])),
    }


def _nav_goals(ck: _Checker, raw: Any, where: str) -> list[NavigationGoal]:
    ck.expect(raw, list, where)
    goals = []
    for i, g in enumerate(raw):
        w = f"{where}[{i}]"
        ck.expect(g, dict, w)
        goals.append(
            NavigationGoal(
                position=ck.vec(ck.get(g, "position", w, list), 3, f"{w}.position"),
                radius=ck.get(g, "radius", w, float, required=False),
            )
        )
    return goals


def _object_goal(ck: _Checker, g: Any, where: str) -> ObjectGoal:
    ck.expect(g, dict, where)
    if "object_id" not in g or g["object_id"] is None:
        raise EpisodeFormatError(f"{ck.source}: field '{where}.object_id' is missing; expected an integer or string")
    views = []
    for i, v in enumerate(ck.get(g, "view_points", where, list, required=False, default=[])):
        w = f"{where}.view_points[{i}]"
        ck.expect(v, dict, w)
        st = ck.get(v, "agent_state", w, dict)
        rot = st.get("rotation")
        views.append(
            ObjectViewLocation(
                agent_state=AgentState(
                    position=ck.vec(
                        ck.get(st, "position", f"{w}.agent_state", list),
                        3,
                        f"{w}.agent_state.position",
                    ),
                    rotation=None if rot is None else ck.vec(rot, 4, f"{w}.agent_state.rotation"),
                ),
                iou=ck.get(v, "iou", w, float, required=False),
            )
        )
    pos = g.get("position")
    return ObjectGoal(
        object_id=g["object_id"],
        position=None if pos is None else ck.vec(pos, 3, f"{where}.position"),
        radius=ck.get(g, "radius", where, float, required=False),
        object_name=ck.get(g, "object_name", where, str, required=False),
        object_name_id=ck.get(g, "object_name_id", where, int, required=False),
        object_category=ck.get(g, "object_category", where, str, required=False),
        room_id=ck.get(g, "room_id", where, str, required=False),
        room_name=ck.get(g, "room_name", where, str, required=False),
        view_points=views,
    )


def _episodes_list(ck: _Checker, data: Any) -> list:
    if not isinstance(data, dict):
        raise ck.fail("<top level>", "an object with an 'episodes' list", data)
    return ck.get(data, "episodes", "<top level>", list)


def parse_pointnav(data: Any, scenes_dir: str | None = None, source: str = "<data>") -> EpisodeDataset:
    ck = _Checker(source)
    ds = EpisodeDataset(
        kind="pointnav",
        content_scenes_path=data.get("content_scenes_path") if isinstance(data, dict) else None,
    )
    for i, ep in enumerate(_episodes_list(ck, data)):
        where = f"episodes[{i}]"
        fields = _base_fields(ck, ep, where, scenes_dir)
        ds.episodes.append(
            NavigationEpisode(
                goals=_nav_goals(ck, ck.get(ep, "goals", where, list), f"{where}.goals"),
                **fields,
            )
        )
    return ds


def _dedup_goals(episodes: list[dict]) -> dict[str, list]:
    """Older ObjectNav files keep goals per episode; group them by goals key as habitat-lab does."""
    by_key: dict[str, list] = {}
    for ep in episodes:
        key = f"{os.path.basename(ep.get('scene_id', ''))}_{ep.get('object_category', '')}"
        by_key.setdefault(key, ep.get("goals") or [])
    return by_key


def parse_objectnav(data: Any, scenes_dir: str | None = None, source: str = "<data>") -> EpisodeDataset:
    ck = _Checker(source)
    raw_episodes = _episodes_list(ck, data)
    top = "<top level>"
    task_ids = ck.get(data, "category_to_task_category_id", top, dict, required=False, default={})
    ann_key = "category_to_scene_annotation_category_id"
    if ann_key not in data and "category_to_mp3d_category_id" in data:
        ann_key = "category_to_mp3d_category_id"  # the legacy name in MP3D files
    ann_ids = ck.get(data, ann_key, top, dict, required=False, default={})
    if set(task_ids) != set(ann_ids):
        raise EpisodeFormatError(
            f"{source}: fields 'category_to_task_category_id' and '{ann_key}' must have the same categories; "
            f"only in one of them: {sorted(set(task_ids) ^ set(ann_ids))}"
        )
    ds = EpisodeDataset(
        kind="objectnav",
        content_scenes_path=data.get("content_scenes_path"),
        category_to_task_category_id=dict(task_ids),
        category_to_scene_annotation_category_id=dict(ann_ids),
    )
    if not raw_episodes:
        return ds
    raw_goals = data["goals_by_category"] if "goals_by_category" in data else _dedup_goals(raw_episodes)
    ck.expect(raw_goals, dict, "goals_by_category")
    for key, goals in raw_goals.items():
        ck.expect(goals, list, f"goals_by_category.{key}")
        ds.goals_by_category[key] = [_object_goal(ck, g, f"goals_by_category.{key}[{j}]") for j, g in enumerate(goals)]
    for i, ep in enumerate(raw_episodes):
        where = f"episodes[{i}]"
        fields = _base_fields(ck, ep, where, scenes_dir)
        fields["episode_id"] = str(i)  # habitat-lab overwrites ids with the list index
        episode = ObjectGoalNavEpisode(object_category=ck.get(ep, "object_category", where, str), **fields)
        if episode.goals_key not in ds.goals_by_category:
            raise EpisodeFormatError(
                f"{source}: field '{where}.object_category' = {episode.object_category!r} has no goals: key "
                f"'{episode.goals_key}' is not in goals_by_category (keys: {sorted(ds.goals_by_category)[:5]}...)"
            )
        episode.goals = ds.goals_by_category[episode.goals_key]
        ds.episodes.append(episode)
    return ds


def parse_vln(data: Any, scenes_dir: str | None = None, source: str = "<data>") -> EpisodeDataset:
    ck = _Checker(source)
    raw_episodes = _episodes_list(ck, data)
    vocab = ck.get(data, "instruction_vocab", "<top level>", dict)
    ck.get(vocab, "word_list", "instruction_vocab", list)
    ds = EpisodeDataset(kind="vln", instruction_vocab=vocab)
    for i, ep in enumerate(raw_episodes):
        where = f"episodes[{i}]"
        fields = _base_fields(ck, ep, where, scenes_dir, id_kind=int)
        instr = ck.get(ep, "instruction", where, dict)
        tokens = ck.get(
            instr,
            "instruction_tokens",
            f"{where}.instruction",
            list,
            required=False,
            default=[],
        )
        ref = ck.get(ep, "reference_path", where, list)
        ds.episodes.append(
            VLNEpisode(
                goals=_nav_goals(
                    ck,
                    ck.get(ep, "goals", where, list, required=False, default=[]),
                    f"{where}.goals",
                ),
                trajectory_id=ck.get(ep, "trajectory_id", where, int),
                instruction=InstructionData(
                    instruction_text=ck.get(instr, "instruction_text", f"{where}.instruction", str),
                    instruction_tokens=list(tokens),
                ),
                reference_path=[ck.vec(p, 3, f"{where}.reference_path[{j}]") for j, p in enumerate(ref)],
                **fields,
            )
        )
    return ds


_PARSERS = {"pointnav": parse_pointnav, "objectnav": parse_objectnav, "vln": parse_vln}


def detect_kind(data: Any) -> str:
    """Guess the format from its distinctive fields (ObjectNav category maps, VLN vocab), else PointNav."""
    if isinstance(data, dict):
        if "instruction_vocab" in data:
            return "vln"
        if {"goals_by_category", "category_to_task_category_id"} & set(data):
            return "objectnav"
        episodes = data.get("episodes")
        if isinstance(episodes, list) and episodes and isinstance(episodes[0], dict):
            if "object_category" in episodes[0]:
                return "objectnav"
            if "instruction" in episodes[0]:
                return "vln"
    return "pointnav"


def load_episodes(path: PathLike, kind: str | None = None, scenes_dir: str | None = None) -> EpisodeDataset:
    """Load a ``.json``/``.json.gz`` episode file; ``kind`` is pointnav/objectnav/vln, or None to detect it."""
    data = read_json(path)
    kind = kind or detect_kind(data)
    if kind not in _PARSERS:
        raise EpisodeFormatError(f"{path}: unknown dataset kind {kind!r}; expected one of {sorted(_PARSERS)}")
    return _PARSERS[kind](data, scenes_dir=scenes_dir, source=str(path))


def load_vlnce_gt(path: PathLike) -> dict[str, dict]:
    """VLN-CE ``{split}_gt.json.gz``: ``{episode_id: {"locations": [[x,y,z]...], ...}}``, locations validated."""
    data = read_json(path)
    ck = _Checker(str(path))
    ck.expect(data, dict, "<top level>")
    out = {}
    for key, entry in data.items():
        ck.expect(entry, dict, key)
        locs = ck.get(entry, "locations", key, list)
        out[str(key)] = dict(
            entry,
            locations=[ck.vec(p, 3, f"{key}.locations[{j}]") for j, p in enumerate(locs)],
        )
    return out


# --------------------------------------------------------------------------- writing
def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def dataset_to_json(ds: EpisodeDataset) -> dict:
    """The habitat-lab JSON of a dataset (ObjectNav goals written once, in ``goals_by_category``)."""
    episodes = []
    for ep in ds.episodes:
        d = dataclasses.asdict(ep)
        if ds.kind == "objectnav":
            d["goals"] = []
        if ds.kind == "vln":
            d["episode_id"] = ep.episode_id
        episodes.append(d)
    out: dict[str, Any] = {"episodes": episodes}
    if ds.content_scenes_path is not None:
        out["content_scenes_path"] = ds.content_scenes_path
    if ds.kind == "objectnav":
        out["category_to_task_category_id"] = ds.category_to_task_category_id
        out["category_to_scene_annotation_category_id"] = ds.category_to_scene_annotation_category_id
        out["goals_by_category"] = {k: [dataclasses.asdict(g) for g in v] for k, v in ds.goals_by_category.items()}
    if ds.kind == "vln":
        out["instruction_vocab"] = ds.instruction_vocab or {"word_list": []}
    return _drop_none(out)


def save_episodes(ds: EpisodeDataset, path: PathLike) -> Path:
    return write_json(dataset_to_json(ds), path)


# --------------------------------------------------------------------------- paths to follow
def episode_path(ep: NavigationEpisode, gt: dict[str, dict] | None = None) -> list[tuple[Vec3, Quat | None]]:
    """Poses to step through: the first shortest path, VLN-CE gt locations, or the VLN reference path.

    Points without a rotation get ``None`` (the caller faces the next waypoint); a path always starts at the
    episode start pose.
    """
    points: list[tuple[Vec3, Quat | None]] = [(list(ep.start_position), list(ep.start_rotation))]
    if gt is not None and str(ep.episode_id) in gt:
        points += [(p, None) for p in gt[str(ep.episode_id)]["locations"]]
    elif ep.shortest_paths and any(p.position is not None for p in ep.shortest_paths[0]):
        points += [(p.position, p.rotation) for p in ep.shortest_paths[0] if p.position is not None]
    elif isinstance(ep, VLNEpisode):
        points += [(p, None) for p in ep.reference_path]
    # drop exact repeats (gt locations start at the start position) so each step moves or turns
    out = [points[0]]
    for pos, rot in points[1:]:
        if pos != out[-1][0] or (rot is not None and rot != out[-1][1]):
            out.append((pos, rot))
    return out
