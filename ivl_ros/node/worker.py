"""The inference thread: every model call runs here, never on an executor thread.

Requests (Ask/Describe) go first, in arrival order; captioning runs when no request waits and a caption
is due. So a question waits at most for the one model call already running, however slow the model is,
and captioning goes on between questions.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Done = Callable[[Any, BaseException | None], None]


class InferenceWorker:
    """``caption_due()`` -> seconds until the next caption (<= 0: now, None: off); ``caption()`` runs one."""

    def __init__(
        self,
        caption_due: Callable[[], float | None],
        caption: Callable[[], None],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self._caption_due = caption_due
        self._caption = caption
        self._on_error = on_error
        self._jobs: deque[tuple[Callable[[], Any], Done]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="ivl-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        """Run ``job`` on the inference thread; ``done(result, error)`` is called there afterwards."""
        with self._cond:
            self._jobs.append((job, done))
            self._cond.notify()

    def wake(self) -> None:
        """Re-check the caption schedule now (after a parameter change or a new frame)."""
        with self._cond:
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next(self) -> tuple[Callable[[], Any], Done] | None:
        """Block until a request or a due caption; None means run a caption."""
        with self._cond:
            while not self._stopping:
                if self._jobs:
                    return self._jobs.popleft()
                due = self._caption_due()
                if due is not None and due <= 0:
                    return None
                # Poll at least every 0.5 s so a schedule change that nobody announced is still seen.
                self._cond.wait(0.5 if due is None else min(due, 0.5))
            raise _Stop

    def _loop(self) -> None:
        while True:
            try:
                item = self._next()
            except _Stop:
                return
            if item is None:
                try:
                    self._caption()
                except Exception as exc:
                    self._on_error("caption", exc)
                    time.sleep(0.1)  # a persistent failure should not spin the CPU
                continue
            job, done = item
            try:
                result, error = job(), None
            except Exception as exc:
                result, error = None, exc
            try:
                done(result, error)
            except Exception as exc:
                self._on_error("request", exc)


class _Stop(Exception):
    pass
