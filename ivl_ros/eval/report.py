"""A static HTML page for people to look at a caption evaluation: thumbnails, captions, per-image CIDEr."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from ivl_ros.errors import ImageError
from ivl_ros.eval.coco_data import CaptionDataset
from ivl_ros.eval.scoring import METRICS, CaptionScores
from ivl_ros.model.images import load_image

THUMB_SIZE = 224

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table.summary td, table.summary th { padding: 2px 10px; text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px; font-size: 13px; }
.card img { max-width: 100%; display: block; margin: 0 auto 6px; }
.pred { font-weight: bold; }
.refs { color: #444; margin: 4px 0 0 1.2em; padding: 0; }
.score { float: right; background: #eef; padding: 0 6px; border-radius: 4px; }
"""


def make_thumbnail(src: Path, dst: Path, size: int = THUMB_SIZE) -> bool:
    """Write a JPEG thumbnail; False (and no thumbnail) if the image cannot be read."""
    try:
        img = load_image(src)  # the engine's image rule: over max_pixels is refused from the header
    except ImageError:
        return False
    img.thumbnail((size, size))
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, "JPEG", quality=85)
    return True


def _text(value: str) -> str:
    # A random or broken model can emit control characters, which are not allowed in HTML text.
    return html.escape(re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "\ufffd", value))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def write_report(
    out_dir: Path, dataset: CaptionDataset, records: list[dict], scores: CaptionScores, metrics: dict
) -> Path:
    """Write ``report.html`` (and ``thumbs/``) into ``out_dir``; returns the page's path."""
    esc = html.escape
    paths = {img.image_id: img.path for img in dataset.images}
    cider = scores.per_image.get("CIDEr", {})
    rows = "".join(f"<tr><th>{name}</th><td>{_fmt(metrics.get(name))}</td></tr>" for name in (*METRICS, "SPICE"))
    if not scores.spice.available:
        rows += f"<tr><th></th><td>SPICE unavailable: {esc(scores.spice.reason)}</td></tr>"
    for key in ("num_images", "avg_caption_words", "images_per_s", "model_id"):
        value = metrics.get(key)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        rows += f"<tr><th>{key}</th><td>{esc(shown)}</td></tr>"
    settings = ", ".join(f"{k}={v}" for k, v in metrics.get("settings", {}).items())
    rows += f"<tr><th>settings</th><td>{esc(settings)}</td></tr>"

    cards = []
    for rec in records:
        image_id = rec["image_id"]
        thumb = Path("thumbs") / f"{image_id}.jpg"
        ok = make_thumbnail(paths[image_id], out_dir / thumb)
        img = f'<img src="{thumb.as_posix()}" alt="{image_id}">' if ok else "<p>(image unreadable)</p>"
        refs = "".join(f"<li>{_text(r)}</li>" for r in dataset.references[image_id])
        cards.append(
            f'<div class="card">{img}<span class="score">CIDEr {_fmt(cider.get(image_id))}</span>'
            f"<div>{esc(rec.get('file', str(image_id)))}</div>"
            f'<div class="pred">{_text(rec["caption"])}</div><ol class="refs">{refs}</ol></div>'
        )

    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Caption evaluation: '
        f"{esc(str(metrics.get('model_id')))}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>Caption evaluation</h1><p>{esc(str(dataset.annotations))}</p>\n"
        f'<table class="summary">{rows}</table>\n<h2>Images</h2>\n'
        "<p>Bold: the model's caption; numbered: the reference captions. Per-image CIDEr uses the IDF of the "
        "whole evaluated set.</p>\n"
        f'<div class="grid">\n{chr(10).join(cards)}\n</div>\n</body></html>\n'
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
