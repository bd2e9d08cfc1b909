"""Inference backends behind one interface, chosen by name (``torch``, ``onnx``, ``trt``).

A backend turns prepared inputs (prompt ids, attention mask, pixel values as numpy) into a
:class:`~ivl_ros.model.generation.DecoderSession`; the engine owns tiling, prompting, the generation
loop and decoding, so every backend shares those exactly.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ivl_ros.errors import OptionError
from ivl_ros.model.generation import DecoderSession
from ivl_ros.model.options import BACKENDS


class Backend(Protocol):
    name: str

    def session(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None
    ) -> DecoderSession:
        """A decoding session for a left-padded batch; ``pixel_values`` holds every row's tiles in row order."""
        ...


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise OptionError(f"backend {name!r} is not one of {BACKENDS}")
    return name
