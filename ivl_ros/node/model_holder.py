"""Loads the engine in the background and remembers why it failed, so the node can stay up without a model.

Loading InternVL2-2B takes seconds to minutes; services, parameters and diagnostics must answer meanwhile
("model is still loading"), and a bad model_path must show on /diagnostics and in every response
instead of killing the node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ivl_ros.errors import IvlError


class DelayedEngine:
    """Test hook: wraps an engine and sleeps ``delay()`` seconds before each model call (a slow model).

    Enabled by the ``debug_inference_delay_s`` parameter; the sleep counts as model time (the node times the
    whole call).
    """

    def __init__(self, engine: Any, delay: Callable[[], float]) -> None:
        self._engine = engine
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine, name)
        if name not in ("ask", "caption", "ask_batch", "caption_batch"):
            return attr

        def slowed(*args: Any, **kwargs: Any) -> Any:
            seconds = self._delay()
            if seconds <= 0:
                return attr(*args, **kwargs)
            time.sleep(seconds)
            return attr(*args, **kwargs)

        return slowed


class ModelHolder:
    """state: 'loading' | 'ready' | 'failed'; ``engine`` is set once ready."""

    def __init__(
        self, load: Callable[[], Any], on_ready: Callable[[Any, float], None], on_failed: Callable[[str], None]
    ) -> None:
        self._load = load
        self._on_ready = on_ready
        self._on_failed = on_failed
        self.state = "loading"
        self.engine: Any = None
        self.error = ""
        self.load_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="ivl-model-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            engine = self._load()
        except IvlError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        self.load_seconds = time.perf_counter() - start
        self.engine = engine
        self.state = "ready"
        self._on_ready(engine, self.load_seconds)

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = "failed"
        self._on_failed(message)

    def unavailable_reason(self) -> str | None:
        """None when the engine can be used, else the message to put in a response."""
        if self.state == "ready":
            return None
        if self.state == "loading":
            return "the model is still loading; try again in a moment"
        return f"the model failed to load: {self.error}"
