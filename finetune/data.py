"""InternVL chat data: meta json + jsonl annotations, the four sample types, and the checker.

The format is upstream's (internvl_chat ``shell/data/*.json`` + jsonl): a meta json maps dataset names to
``{root, annotation, data_augment, repeat_time, length, [max_dynamic_patch]}``; each jsonl line is one
sample ``{image | video, conversations: [{from: human|gpt, value}]}``. The kind of a line follows upstream's
dispatch: a non-empty ``image`` (str: single image, list: multi-image), else a non-empty ``video``, else pure
text. Every problem is reported as ``file:line: what is wrong`` so that a user can jump to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from finetune.recording import missing_dataset_message
from ivl_ros.errors import IvlError

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
ROLES = ("human", "gpt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# The named-dataset registry; IVL_DATASETS points at another one (tests, users with their own data roots).
REGISTRY = Path(os.environ.get("IVL_DATASETS") or Path(__file__).resolve().parent / "datasets.json")
REPO_ROOT = Path(__file__).resolve().parent.parent


class DataError(IvlError):
    """The training data cannot be used as it is."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Dataset:
    """One entry of a meta json."""

    name: str
    root: Path
    annotation: Path
    data_augment: bool
    repeat_time: float
    length: int | None
    max_dynamic_patch: int | None
    meta_file: str
    meta_line: int


@dataclass
class Sample:
    """One jsonl line, validated; ``images`` are resolved paths (video: the frames, in order)."""

    kind: str  # "text" | "image" | "multi_image" | "video"
    conversations: list[dict]
    images: list[Path]
    dataset: Dataset
    file: str
    line: int
    length: int | None = None  # the optional per-line ``length`` (tokens) used for length grouping

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class DataReport:
    datasets: list[Dataset] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    lines_read: int = 0

    @property
    def bad_lines(self) -> set[tuple[str, int]]:
        return {(p.file, p.line) for p in self.problems}


def resolve_data(spec: str) -> Path:
    """``--data``: a name in finetune/datasets.json (e.g. ``habitat``) or a path to a meta json."""
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise DataError(f"{path}: meta json not found")
        return path
    try:
        registry = json.loads(REGISTRY.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{REGISTRY}: cannot read the dataset registry ({exc})") from None
    if spec not in registry:
        raise DataError(f"--data {spec!r}: not a meta json path and not a name in {REGISTRY} "
                        f"(known: {', '.join(sorted(registry))})")
    target = Path(registry[spec])
    target = target if target.is_absolute() else REPO_ROOT / target
    if not target.is_file():
        raise DataError(missing_dataset_message(spec, target, REGISTRY))
    return target


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return 1


def read_meta(meta_path: Path, report: DataReport) -> list[Dataset]:
    """Parse the meta json; problems go to ``report`` (file:line of the dataset's entry)."""
    meta_path = Path(meta_path)
    where = str(meta_path)
    try:
        raw = meta_path.read_bytes()
    except OSError as exc:
        report.problems.append(Problem(where, 1, f"cannot read the meta json ({exc.strerror})"))
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        report.problems.append(Problem(where, line, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})"))
        return []
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        report.problems.append(Problem(where, exc.lineno, f"bad JSON: {exc.msg} (column {exc.colno})"))
        return []
    if not isinstance(meta, dict) or not meta:
        report.problems.append(Problem(where, 1, "the meta json must be a non-empty object {name: {root, annotation,"
                                                 " data_augment, repeat_time, length}}"))
        return []
    datasets = []
    for name, entry in meta.items():
        line = _line_of(text, json.dumps(name))
        problem = _meta_entry_problem(entry)
        if problem:
            report.problems.append(Problem(where, line, f"dataset {name!r}: {problem}"))
            continue
        base = meta_path.parent
        # Upstream resolves relative paths against the working directory (its scripts cd into internvl_chat);
        # we try the meta file's folder first so that a data folder can be moved as a whole.
        root = _resolve(entry["root"], base)
        annotation = _resolve(entry["annotation"], base)
        if not annotation.is_file():
            report.problems.append(Problem(where, line, f"dataset {name!r}: annotation file not found: "
                                                        f"{entry['annotation']}"))
            continue
        if not root.is_dir():
            report.problems.append(Problem(where, line, f"dataset {name!r}: root folder not found: {entry['root']}"))
            continue
        mdp = entry.get("max_dynamic_patch")
        datasets.append(Dataset(name, root, annotation, bool(entry.get("data_augment", False)),
                                float(entry.get("repeat_time", 1)), entry.get("length"),
                                int(mdp) if mdp is not None else None, where, line))
    return datasets


def _resolve(value: str, base: Path) -> Path:
    p = Path(value)
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else Path.cwd() / p


def _meta_entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "must be an object"
    for key in ("root", "annotation"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            return f"missing or empty {key!r}"
    rt = entry.get("repeat_time", 1)
    if not isinstance(rt, (int, float)) or rt <= 0 or (rt > 1 and int(rt) != rt):
        return f"repeat_time must be a number in (0, 1] or a whole number > 1, got {rt!r}"
    mdp = entry.get("max_dynamic_patch")
    if mdp is not None and (not isinstance(mdp, int) or mdp < 1):
        return f"max_dynamic_patch must be a positive integer, got {mdp!r}"
    return None


def sample_kind(item: dict) -> str:
    """Upstream's dispatch order: image (list -> multi), then video, else pure text."""
    image = item.get("image")
    if image is not None and len(image) != 0:
        return "multi_image" if isinstance(image, list) else "image"
    video = item.get("video")
    if video is not None and video != "":
        return "video"
    return "text"


def _check_conversations(conv) -> str | None:
    if not isinstance(conv, list) or not conv:
        return "empty conversation ('conversations' must be a non-empty list)"
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return f"turn {i + 1} must be an object with 'from' and 'value'"
        if turn["from"] not in ROLES:
            return f"turn {i + 1}: 'from' is {turn['from']!r}; expected 'human' or 'gpt'"
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            return f"turn {i + 1} ({turn['from']}) has an empty value"
        expected = ROLES[i % 2]
        if turn["from"] != expected:
            return f"wrong turn order: turn {i + 1} is from {turn['from']!r}, expected {expected!r} " \
                   "(turns alternate human, gpt, starting with human)"
    if conv[-1]["from"] != "gpt":
        return "wrong turn order: the last turn is from 'human' (nothing to learn from it)"
    return None


def _frames(video: Path) -> list[Path]:
    return sorted(p for p in video.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_problem(path: Path, shown: str) -> str | None:
    if not path.is_file():
        return f"missing image: {shown}"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            if img.width < 1 or img.height < 1:
                return f"image has zero size: {shown}"
    except (UnidentifiedImageError, OSError) as exc:
        return f"cannot read image {shown} ({exc})"
    return None


def check_item(item, ds: Dataset) -> tuple[Sample | None, str | None]:
    """Validate one parsed jsonl line; returns (sample, None) or (None, problem)."""
    if not isinstance(item, dict):
        return None, "a line must be a JSON object"
    problem = _check_conversations(item.get("conversations"))
    if problem:
        return None, problem
    conv = item["conversations"]
    n_tags = sum(t["value"].count(IMAGE_TAG) for t in conv)
    kind = sample_kind(item)
    images: list[Path] = []
    if kind == "image":
        if not isinstance(item["image"], str):
            return None, f"'image' must be a string or a list of strings, got {type(item['image']).__name__}"
        images = [ds.root / item["image"]]
        if n_tags > 1:
            return None, f"<image> count != images: {n_tags} <image> tags for 1 image"
    elif kind == "multi_image":
        if not all(isinstance(x, str) and x for x in item["image"]):
            return None, "'image' list must hold non-empty strings"
        images = [ds.root / x for x in item["image"]]
        if n_tags != len(images):
            return None, f"<image> count != images: {n_tags} <image> tags for {len(images)} images"
    elif kind == "video":
        video = item["video"]
        if isinstance(video, list):  # extension: an explicit list of frame files
            images = [ds.root / x for x in video]
        elif isinstance(video, str) and (ds.root / video).is_dir():
            images = _frames(ds.root / video)
            if not images:
                return None, f"video folder has no frames: {video}"
        elif isinstance(video, str) and (ds.root / video).exists():
            return None, f"video file {video}: only frame folders (or lists of frame files) are supported; " \
                         "extract the frames into a folder"
        else:
            return None, f"missing video: {video}"
        if n_tags not in (0, len(images)):
            return None, f"<image> count != images: {n_tags} <image> tags for {len(images)} video frames"
    else:
        if n_tags:
            return None, f"<image> count != images: {n_tags} <image> tags in a pure-text sample (no 'image')"
    for img in images:
        problem = _image_problem(img, str(img.relative_to(ds.root)) if img.is_relative_to(ds.root) else str(img))
        if problem:
            return None, problem
    length = item.get("length")
    return Sample(kind, conv, images, ds, "", 0, int(length) if isinstance(length, int) else None), None


def read_annotation(ds: Dataset, report: DataReport) -> list[Sample]:
    where = str(ds.annotation)
    samples = []
    with open(ds.annotation, "rb") as fh:
        raw_lines = fh.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, 1):
        report.lines_read += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.problems.append(Problem(where, lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                                          f"{exc.start + 1})"))
            continue
        if not text.strip():
            report.problems.append(Problem(where, lineno, "empty line"))
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            report.problems.append(Problem(where, lineno, f"bad JSON: {exc.msg} (column {exc.colno})"))
            continue
        sample, problem = check_item(item, ds)
        if problem:
            report.problems.append(Problem(where, lineno, problem))
            continue
        sample.file, sample.line = where, lineno
        samples.append(sample)
    if ds.length is not None and ds.length != len(raw_lines):
        message = f"dataset {ds.name!r}: 'length' is {ds.length} but {ds.annotation.name} has {len(raw_lines)} lines"
        report.warnings.append(Problem(ds.meta_file, ds.meta_line, message))
    return samples


def check_data(meta_path: str | Path) -> DataReport:
    """Walk the meta json and every annotation; collect valid samples, problems and warnings."""
    report = DataReport()
    report.datasets = read_meta(Path(meta_path), report)
    for ds in report.datasets:
        report.samples.extend(read_annotation(ds, report))
    return report


def repeat_samples(samples: list[Sample], ds: Dataset) -> list[Sample]:
    """Upstream's repeat_time: < 1 keeps the first fraction, > 1 repeats the list."""
    if ds.repeat_time < 1:
        return samples[: int(len(samples) * ds.repeat_time)]
    return samples * int(ds.repeat_time)


def training_samples(report: DataReport) -> list[Sample]:
    """All valid samples of all datasets, in meta order, with repeat_time applied."""
    out: list[Sample] = []
    for ds in report.datasets:
        out.extend(repeat_samples([s for s in report.samples if s.dataset is ds], ds))
    return out
