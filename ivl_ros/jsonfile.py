"""Reading the project's JSON inputs (configs, annotations, tokenizer files) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ivl_ros.errors import IvlError


def read_json(path: str | Path, what: str = "JSON file", error: type[IvlError] = IvlError) -> Any:
    """Parse ``path``; ``error`` names the file (and line/column) when it is missing, malformed or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: malformed JSON in {what} (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
