"""Annotation readers: Karpathy list + ground truth, plain COCO captions, and their error messages."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ivl_ros.errors import IvlError
from ivl_ros.eval.coco_data import karpathy_image_id, load_caption_dataset


def _karpathy_tree(tmp_path, ids=(391895, 522418), gt=True):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    records, images, anns = [], [], []
    for image_id in ids:
        rel = f"val2014/COCO_val2014_{image_id:012d}.jpg"
        Image.new("RGB", (8, 8)).save(root / rel)
        records.append({"image": rel, "caption": [f"own caption {image_id}"]})
        images.append({"id": image_id})
        anns.append({"image_id": image_id, "id": image_id, "caption": f"gt caption {image_id}"})
    ann_dir = root / "annotations"
    ann_dir.mkdir()
    (ann_dir / "coco_karpathy_test.json").write_text(json.dumps(records))
    if gt:
        (ann_dir / "coco_karpathy_test_gt.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root, ann_dir / "coco_karpathy_test.json"


def test_karpathy_image_id_is_the_int_after_the_last_underscore():
    assert karpathy_image_id("val2014/COCO_val2014_000000391895.jpg") == 391895
    with pytest.raises(IvlError, match="cannot take an image id from 'val2014/cat.jpg'"):
        karpathy_image_id("val2014/cat.jpg")


def test_karpathy_list_uses_sibling_gt_file(tmp_path):
    root, ann = _karpathy_tree(tmp_path)
    ds = load_caption_dataset(ann, root)
    assert ds.source == "karpathy"
    assert [i.image_id for i in ds.images] == [391895, 522418]
    assert ds.images[0].path == root / "val2014" / "COCO_val2014_000000391895.jpg"
    assert ds.references[522418] == ["gt caption 522418"]
    assert [i.image_id for i in load_caption_dataset(ann, root, limit=1).images] == [391895]


def test_karpathy_list_without_gt_falls_back_to_record_captions_or_asks_for_gt(tmp_path):
    root, ann = _karpathy_tree(tmp_path, gt=False)
    assert load_caption_dataset(ann, root).references[391895] == ["own caption 391895"]
    ann.write_text(json.dumps([{"image": "val2014/COCO_val2014_000000391895.jpg"}]))
    with pytest.raises(IvlError, match="needs its COCO-format ground truth: pass --gt FILE"):
        load_caption_dataset(ann, root)


def test_coco_file_and_coco_style_subfolder(coco_set):
    root, ann = coco_set
    ds = load_caption_dataset(ann, root)
    assert ds.source == "coco" and len(ds.images) == 4 and len(ds.references[101]) == 2
    # COCO's own layout: file_name COCO_val2014_*.jpg lives in <root>/val2014/
    sub = root / "val2014"
    sub.mkdir()
    for img in ds.images:
        img.path.rename(sub / img.file)
    assert load_caption_dataset(ann, root).images[0].path == sub / ds.images[0].file


def test_missing_image_files_are_listed(coco_set):
    root, ann = coco_set
    (root / "COCO_val2014_000000000103.jpg").unlink()
    with pytest.raises(
        IvlError,
        match=r"1 of 4 image file\(s\) listed in .*captions.json are missing under .*"
        r"COCO_val2014_000000000103.jpg",
    ):
        load_caption_dataset(ann, root)
    assert len(load_caption_dataset(ann, root, limit=2).images) == 2  # only the evaluated images must exist


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"images": [', r"malformed JSON in annotation file \(line 1, column 13"),
        ('"just a string"', "expected a list of image records .* or an object"),
        ('{"images": []}', "missing key 'annotations'"),
        ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\]: missing key 'file_name'"),
        ('{"images": [{"id": "1", "file_name": "a.jpg"}], "annotations": []}', r"'id' must be int, got '1'"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}',
            r"annotations\[0\]: missing key 'caption'",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}',
            r"1 image\(s\) have no reference captions",
        ),
    ],
)
def test_malformed_annotation_files_name_the_problem(tmp_path, text, message):
    ann = tmp_path / "bad.json"
    ann.write_text(text)
    with pytest.raises(IvlError, match=message) as info:
        load_caption_dataset(ann, tmp_path)
    assert str(ann) in str(info.value)


def test_missing_annotation_file_and_root(tmp_path):
    with pytest.raises(IvlError, match="nope.json: annotation file not found"):
        load_caption_dataset(tmp_path / "nope.json", tmp_path)
    with pytest.raises(IvlError, match="image root directory not found"):
        load_caption_dataset(tmp_path / "nope.json", tmp_path / "no-root")
