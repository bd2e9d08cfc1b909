"""InternVL chat data: meta json + jsonl annotations, the four sample types, and the checker.

The format is upstream's (internvl_chat ``shell/data/*.json`` + jsonl): a meta json maps dataset names to
``{root, annotation, data_augment, repeat_time, length, [max_dynamic_patch]}``; each jsonl line is one
sample ``{image | video, conversations: [{from: human|gpt, value}]}``. The kind of a line follows upstream's
dispatch: a non-empty ``image`` (str: single image, list: multi-image), else a non-empty ``video``, else pure
text. Every problem is reported as ``file:line: what is wrong`` so that a user can jump to it.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import stat
from dataclasses import dataclass, field
from pathlib import Path

from finetune.recording import missing_dataset_message
from finetune.video import opencv_problem, probe_video
from ivl_ros.errors import IvlError

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
ROLES = ("human", "gpt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# The named-dataset registry; IVL_DATASETS points at another one (tests, users with their own data roots).
REGISTRY = Path(os.environ.get("IVL_DATASETS") or Path(__file__).resolve().parent / "datasets.json")
REPO_ROOT = Path(__file__).resolve().parent.parent
# Pseudo-file systems: never opened as images (reading /proc/self/environ or a device is never intended).
SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


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
    video_file: Path | None = None  # a video file: frames are decoded and sampled when the sample is built
    frames_listed: bool = False  # video given as a list of frame files: used as listed, never sampled

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
        raise DataError(
            f"--data {spec!r}: not a meta json path and not a name in {REGISTRY} (known: {', '.join(sorted(registry))})"
        )
    target = Path(registry[spec])
    target = target if target.is_absolute() else REPO_ROOT / target
    if not target.is_file():
        raise DataError(missing_dataset_message(spec, target, REGISTRY))
    return target


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str):
    """Strict JSON: NaN/Infinity refused (ValueError), too deep nesting a ValueError rather than RecursionError."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"bad JSON: {exc.msg} (column {exc.colno})"
    return f"bad JSON: {exc}"


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
        meta = parse_json(text)
    except ValueError as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 1
        report.problems.append(Problem(where, line, _json_problem(exc)))
        return []
    if not isinstance(meta, dict) or not meta:
        report.problems.append(
            Problem(
                where,
                1,
                "the meta json must be a non-empty object {name: {root, annotation,"
                " data_augment, repeat_time, length}}",
            )
        )
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
            report.problems.append(
                Problem(where, line, f"dataset {name!r}: annotation file not found: {entry['annotation']}")
            )
            continue
        if not root.is_dir():
            report.problems.append(Problem(where, line, f"dataset {name!r}: root folder not found: {entry['root']}"))
            continue
        datasets.append(
            Dataset(
                name,
                root,
                annotation,
                bool(entry.get("data_augment", False)),
                float(entry.get("repeat_time", 1)),
                entry.get("length"),
                entry.get("max_dynamic_patch"),
                where,
                line,
            )
        )
    return datasets


def _resolve(value: str, base: Path) -> Path:
    p = Path(value)
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else Path.cwd() / p


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "must be an object"
    for key in ("root", "annotation"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            return f"missing or empty {key!r}"
    rt = entry.get("repeat_time", 1)
    if (
        isinstance(rt, bool)
        or not isinstance(rt, (int, float))
        or not math.isfinite(rt)
        or rt <= 0
        or (rt > 1 and int(rt) != rt)
    ):
        return f"repeat_time must be a number in (0, 1] or a whole number > 1, got {rt!r}"
    mdp = entry.get("max_dynamic_patch")
    if mdp is not None and (not _is_int(mdp) or mdp < 1):
        return f"max_dynamic_patch must be a positive integer, got {mdp!r}"
    length = entry.get("length")
    if length is not None and (not _is_int(length) or length < 0):
        return f"length must be a non-negative integer (the number of lines), got {length!r}"
    augment = entry.get("data_augment", False)
    if not isinstance(augment, bool) and augment not in (0, 1):
        return f"data_augment must be true or false, got {augment!r}"
    return None


def sample_kind(item: dict) -> str:
    """Upstream's dispatch order: image (list -> multi), then video, else pure text.

    ``item`` has passed ``_media_type_problem`` (image/video are strings, lists or absent).
    """
    image = item.get("image")
    if image is not None and len(image) != 0:
        return "multi_image" if isinstance(image, list) else "image"
    video = item.get("video")
    if video is not None and video != "":
        return "video"
    return "text"


def _media_type_problem(item: dict) -> str | None:
    for key, what in (
        ("image", "a string or a list of strings"),
        ("video", "a video file, a frame folder or a list of frame files"),
    ):
        value = item.get(key)
        if value is None or isinstance(value, str):
            continue
        if not isinstance(value, list):
            return f"{key!r} must be {what}, got {type(value).__name__} {_short(value)}"
        bad = [x for x in value if not isinstance(x, str) or not x]
        if bad:
            return f"{key!r} list must hold non-empty strings, got {_short(bad[0])}"
        if key == "video" and not value:
            return "'video' list is empty (list the frame files, or drop the key)"
    length = item.get("length")
    if length is not None and (not _is_int(length) or length < 0):
        return f"'length' must be a non-negative integer (tokens), got {_short(length)}"
    return None


def _short(value) -> str:
    return reprlib.repr(value)  # bounded in depth and length, whatever the line holds


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
            return (
                f"wrong turn order: turn {i + 1} is from {turn['from']!r}, expected {expected!r} "
                "(turns alternate human, gpt, starting with human)"
            )
    if conv[-1]["from"] != "gpt":
        return "wrong turn order: the last turn is from 'human' (nothing to learn from it)"
    return None


def _frames(video: Path) -> list[Path]:
    return sorted(p for p in video.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _file_problem(path: Path, shown: str, what: str = "image") -> str | None:
    """Refuse what is not a regular, non-empty file without opening it (devices, FIFOs, /proc, /sys)."""
    try:
        resolved = path.resolve()
        st = os.stat(resolved)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return f"missing {what}: {shown}"
    if any(resolved == t or resolved.is_relative_to(t) for t in SYSTEM_TREES):
        return f"not {_article(what)} file: {shown} is a system pseudo-file ({resolved}); refused without reading it"
    if stat.S_ISDIR(st.st_mode):
        return f"missing {what}: {shown} is a folder"
    if not stat.S_ISREG(st.st_mode):
        return (
            f"not {_article(what)} file: {shown} is not a regular file (device, FIFO or socket); refused without "
            "reading it"
        )
    if st.st_size == 0:
        return f"{what} file is empty (0 bytes): {shown}"
    return None


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _image_problem(path: Path, shown: str, decode: bool) -> str | None:
    """Header check (size, format) or, with ``decode``, a full decode through the model core's ``load_image``."""
    problem = _file_problem(path, shown)
    if problem:
        return problem
    from PIL import Image, UnidentifiedImageError

    if decode:
        from ivl_ros.model.images import load_image

        try:
            load_image(path).close()
        except (IvlError, Image.DecompressionBombError) as exc:
            # load_image's messages start with the path and often "cannot read image": said once here.
            detail = str(exc).removeprefix(f"{path}: ").removeprefix("cannot read image ").strip()
            return f"cannot read image {shown} ({detail.removeprefix('(').removesuffix(')')})"
        return None
    try:
        with Image.open(path) as img:  # reads the header only
            if img.width < 1 or img.height < 1:
                return f"image has zero size: {shown}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot read image {shown} ({exc})"
    return None


def check_item(item, ds: Dataset, decode: bool = False) -> tuple[Sample | None, str | None]:
    """Validate one parsed jsonl line; returns (sample, None) or (None, problem).

    ``decode``: decode every image fully (``--check-data``), not only its header (training start).
    """
    if not isinstance(item, dict):
        return None, "a line must be a JSON object"
    problem = _check_conversations(item.get("conversations")) or _media_type_problem(item)
    if problem:
        return None, problem
    conv = item["conversations"]
    n_tags = sum(t["value"].count(IMAGE_TAG) for t in conv)
    kind = sample_kind(item)
    images: list[Path] = []
    if kind == "image":
        images = [ds.root / item["image"]]
        if n_tags > 1:
            return None, f"<image> count != images: {n_tags} <image> tags for 1 image"
    elif kind == "multi_image":
        images = [ds.root / x for x in item["image"]]
        if n_tags != len(images):
            return None, f"<image> count != images: {n_tags} <image> tags for {len(images)} images"
    elif kind == "video":
        video = item["video"]
        if isinstance(video, list):  # extension: an explicit list of frame files
            images = [ds.root / x for x in video]
        elif (ds.root / video).is_dir():
            images = _frames(ds.root / video)
            if not images:
                return None, f"video folder has no frames: {video}"
        else:
            if n_tags:
                return (
                    None,
                    f"<image> count != images: {n_tags} <image> tags in a video-file sample (the frames "
                    "are sampled when it is built; write <video> or nothing)",
                )
            path = ds.root / video
            problem = (
                _file_problem(path, video, what="video")
                or opencv_problem()
                or (probe_video(path, video) if decode else None)
            )
            if problem is not None:
                return None, problem
            return Sample(kind, conv, [], ds, "", 0, item.get("length"), video_file=path), None
        if n_tags not in (0, len(images)):
            return None, f"<image> count != images: {n_tags} <image> tags for {len(images)} video frames"
    else:
        if n_tags:
            return None, f"<image> count != images: {n_tags} <image> tags in a pure-text sample (no 'image')"
    for img in images:
        problem = _image_problem(
            img, str(img.relative_to(ds.root)) if img.is_relative_to(ds.root) else str(img), decode
        )
        if problem:
            return None, problem
    return Sample(
        kind,
        conv,
        images,
        ds,
        "",
        0,
        item.get("length"),
        frames_listed=kind == "video" and isinstance(item["video"], list),
    ), None


def outside_root(sample: Sample) -> Path | None:
    """The first image of ``sample`` that resolves outside its dataset root (upstream allows it; we warn)."""
    root = sample.dataset.root.resolve()
    media = [*sample.images, *([sample.video_file] if sample.video_file else [])]
    return next((p for p in media if not p.resolve().is_relative_to(root)), None)


def read_annotation(ds: Dataset, report: DataReport, decode: bool = False) -> list[Sample]:
    where = str(ds.annotation)
    samples = []
    outside: list[tuple[int, Path]] = []
    with open(ds.annotation, "rb") as fh:
        raw_lines = fh.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, 1):
        report.lines_read += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.problems.append(
                Problem(where, lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
            )
            continue
        if not text.strip():
            report.problems.append(Problem(where, lineno, "empty line"))
            continue
        try:
            item = parse_json(text)
        except ValueError as exc:
            report.problems.append(Problem(where, lineno, _json_problem(exc)))
            continue
        sample, problem = check_item(item, ds, decode)
        if problem:
            report.problems.append(Problem(where, lineno, problem))
            continue
        sample.file, sample.line = where, lineno
        samples.append(sample)
        away = outside_root(sample)
        if away is not None:
            outside.append((lineno, away))
    if outside:
        (lineno, away), n = outside[0], len(outside)
        more = f" ({n} lines of this file have such paths; this is the first)" if n > 1 else ""
        report.warnings.append(Problem(where, lineno, f"image path {away} is outside the dataset root {ds.root}{more}"))
    if ds.length is not None and ds.length != len(raw_lines):
        message = f"dataset {ds.name!r}: 'length' is {ds.length} but {ds.annotation.name} has {len(raw_lines)} lines"
        report.warnings.append(Problem(ds.meta_file, ds.meta_line, message))
    return samples


def check_data(meta_path: str | Path, decode: bool = False) -> DataReport:
    """Walk the meta json and every annotation; collect valid samples, problems and warnings.

    ``decode``: decode every image fully (``--check-data``); training starts with header checks only and meets
    an undecodable image when it builds that sample (an error, or a skip with --skip-bad-samples).
    """
    report = DataReport()
    report.datasets = read_meta(Path(meta_path), report)
    for ds in report.datasets:
        report.samples.extend(read_annotation(ds, report, decode))
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
