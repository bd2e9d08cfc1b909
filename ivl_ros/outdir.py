"""Output directories (``ivl convert DST``, ``build_engines.py --out``): checked before any slow work starts."""

from __future__ import annotations

import os
from pathlib import Path

from ivl_ros.errors import OptionError


def check_output_dir(path: str | Path, what: str, must_be_empty: bool = False) -> Path:
    """Refuse ``path`` unless it is (or can be created as) a writable directory; nothing is created.

    ``what`` names the option in the message (e.g. ``--out``). With ``must_be_empty`` an existing directory
    must have no entries.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OptionError(f"{what} {path}: exists and is not a directory; choose a new directory path")
        if must_be_empty and any(path.iterdir()):
            raise OptionError(f"{what} {path}: exists and is not empty; choose a new directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OptionError(f"{what} {path}: directory is not writable")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{what} {path}: cannot be created, {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"{what} {path}: cannot be created, {parent} is not writable")
    return path


def make_output_dir(path: str | Path, what: str, must_be_empty: bool = False) -> Path:
    """:func:`check_output_dir`, then create it (parents included); an OS refusal becomes an OptionError."""
    path = check_output_dir(path, what, must_be_empty)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{what} {path}: cannot be created ({exc.strerror or exc})") from None
    return path
