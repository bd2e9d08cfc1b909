"""Plain per-stage progress lines with timings (no terminal tricks, so logs and CI stay readable)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    def __init__(self, total: int, stream=None) -> None:
        self.total = total
        self.index = 0
        self.stream = stream or sys.stderr

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Print start/end lines around a stage; the body may set note['result'] (e.g. 'skipped')."""
        self.index += 1
        prefix = f"[{self.index}/{self.total}] {name}"
        self.say(f"{prefix} ...")
        note: dict = {"result": "done", "detail": ""}
        start = time.perf_counter()
        try:
            yield note
        except BaseException:
            self.say(f"{prefix}: FAILED after {time.perf_counter() - start:.1f}s")
            raise
        detail = f" ({note['detail']})" if note["detail"] else ""
        self.say(f"{prefix}: {note['result']} in {time.perf_counter() - start:.1f}s{detail}")
