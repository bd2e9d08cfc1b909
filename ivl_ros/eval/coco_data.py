"""Caption evaluation inputs: the upstream Karpathy split files and plain COCO caption annotation files.

Two layouts are read (as upstream ``eval/caption/evaluate_caption.py`` does):

* Karpathy: ``coco_karpathy_test.json`` is a list of records whose ``image`` is relative to the image root,
  e.g. ``val2014/COCO_val2014_000000391895.jpg``; the image id is the integer after the last ``_``. The
  references come from the COCO-format ``coco_karpathy_test_gt.json`` (``--gt``, or found next to the list
  as ``<stem>_gt.json``), else from the records' own ``caption`` lists.
* COCO: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}`` (also flickr30k /
  nocaps files, whose images may carry ``image`` instead of ``file_name``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivl_ros.errors import IvlError, OptionError
from ivl_ros.jsonfile import read_json as read_jsonfile


@dataclass(frozen=True)
class CaptionImage:
    image_id: int
    file: str  # as written in the annotation file
    path: Path  # resolved against the image root


@dataclass
class CaptionDataset:
    images: list[CaptionImage]
    references: dict[int, list[str]]
    source: str  # "karpathy" or "coco"
    annotations: Path


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """Parse a JSON input of the evaluation; IvlError naming the file (and line/column) on failure."""
    return read_jsonfile(path, what)


def karpathy_image_id(image: str) -> int:
    """``val2014/COCO_val2014_000000391895.jpg`` -> 391895 (upstream: int of the part after the last ``_``)."""
    stem = Path(image).stem
    try:
        return int(stem.rsplit("_", 1)[-1])
    except ValueError:
        raise IvlError(
            f"cannot take an image id from {image!r}: expected a name ending in _<digits>, "
            "like val2014/COCO_val2014_000000391895.jpg"
        ) from None


def _field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(record, dict):
        raise IvlError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise IvlError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise IvlError(f"{where}: {key!r} must be {names}, got {value!r}")
    return value


def coco_references(data: Any, path: Path) -> dict[int, list[str]]:
    """``annotations`` of a COCO caption file -> {image_id: [captions]}."""
    anns = _field(data, "annotations", list, str(path))
    refs: dict[int, list[str]] = {}
    for i, ann in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        image_id = _field(ann, "image_id", int, where)
        refs.setdefault(image_id, []).append(_field(ann, "caption", str, where))
    return refs


def _resolve(root: Path, file: str) -> Path:
    path = root / file
    # COCO's own files name images COCO_val2014_*.jpg while they sit in <root>/val2014/.
    m = re.match(r"COCO_([a-z]+\d{4})_\d+", Path(file).name)
    if not path.exists() and m and (root / m.group(1) / file).exists():
        return root / m.group(1) / file
    return path


def _karpathy(records: list, path: Path, root: Path, gt: Path | None) -> tuple[list[CaptionImage], dict]:
    images = []
    own_refs: dict[int, list[str]] = {}
    for i, rec in enumerate(records):
        file = _field(rec, "image", str, f"{path}: record {i}")
        image_id = karpathy_image_id(file)
        images.append(CaptionImage(image_id, file, _resolve(root, file)))
        caps = rec.get("caption")
        if isinstance(caps, str):
            caps = [caps]
        if isinstance(caps, list) and caps and all(isinstance(c, str) for c in caps):
            own_refs[image_id] = caps
    if gt is None:
        sibling = path.with_name(f"{path.stem}_gt.json")
        gt = sibling if sibling.is_file() else None
    if gt is not None:
        return images, coco_references(read_json(gt, "ground-truth file"), gt)
    if len(own_refs) == len(images):
        return images, own_refs
    raise IvlError(
        f"{path}: a Karpathy image list needs its COCO-format ground truth: pass --gt FILE "
        f"(upstream: coco_karpathy_test_gt.json) or put {path.stem}_gt.json next to it"
    )


def _coco(data: dict, path: Path, root: Path) -> tuple[list[CaptionImage], dict]:
    images = []
    for i, rec in enumerate(_field(data, "images", list, str(path))):
        where = f"{path}: images[{i}]"
        image_id = _field(rec, "id", int, where)
        key = "file_name" if isinstance(rec, dict) and "file_name" in rec else "image"
        if isinstance(rec, dict) and key not in rec:
            raise IvlError(f"{where}: missing key 'file_name'")
        file = _field(rec, key, str, where)
        images.append(CaptionImage(image_id, file, _resolve(root, file)))
    return images, coco_references(data, path)


def load_caption_dataset(
    annotations: str | Path,
    images_root: str | Path,
    *,
    gt: str | Path | None = None,
    limit: int | None = None,
    check_files: bool = True,
) -> CaptionDataset:
    """Read an annotation file (Karpathy list or COCO captions) and check that its images exist.

    ``limit`` keeps the first N images (in file order); only those are checked on disk.
    """
    path = Path(annotations)
    root = Path(images_root)
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be >= 1, got {limit}")
    if not root.is_dir():
        raise IvlError(f"{root}: image root directory not found")
    data = read_json(path)
    if isinstance(data, list):
        source = "karpathy"
        images, refs = _karpathy(data, path, root, Path(gt) if gt is not None else None)
    elif isinstance(data, dict):
        source = "coco"
        images, refs = _coco(data, path, root)
    else:
        raise IvlError(
            f"{path}: expected a list of image records (Karpathy) or an object with 'images' and "
            f"'annotations' (COCO), got {type(data).__name__}"
        )
    if not images:
        raise IvlError(f"{path}: lists no images")

    seen: set[int] = set()
    unique = []
    for img in images:  # the Karpathy list repeats nothing, but a hand-made file may; caption each image once
        if img.image_id not in seen:
            seen.add(img.image_id)
            unique.append(img)
    images = unique[:limit] if limit is not None else unique

    no_refs = [img for img in images if not refs.get(img.image_id)]
    if no_refs:
        shown = ", ".join(f"{i.image_id} ({i.file})" for i in no_refs[:5])
        raise IvlError(f"{path}: {len(no_refs)} image(s) have no reference captions: {shown}")
    if check_files:
        missing = [img for img in images if not img.path.is_file()]
        if missing:
            shown = ", ".join(str(i.path) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise IvlError(
                f"{len(missing)} of {len(images)} image file(s) listed in {path} are missing under {root}: {shown}"
            )
    return CaptionDataset(images, {img.image_id: refs[img.image_id] for img in images}, source, path)
