"""The captioner's parameters as one table: name, default, range, description, runtime-changeable or not.

The node declares them from this table; the launchers, config/captioner.yaml and the README table are
checked against it in tests, so there is one place to change a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ivl_ros.model.options import (
    BACKENDS,
    CAPTION_MAX_TILES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUESTION_TOKENS,
    DEVICE_HELP,
    DTYPES,
    MAX_PIXELS_LIMIT,
    MAX_TILES_LIMIT,
)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    low: float | None = None  # inclusive range, for int/float parameters
    high: float | None = None
    choices: tuple[str, ...] = ()  # for string parameters
    read_only: bool = False  # True: needs a node restart (model loading, subscriptions)


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "InternVL2 checkpoint directory (upstream or converted layout)", read_only=True),
    ParamSpec("backend", "torch", "inference backend", choices=BACKENDS, read_only=True),
    ParamSpec(
        "engines_path", "", "exported engines directory for onnx/trt (empty: next to the checkpoint)", read_only=True
    ),
    ParamSpec("device", "cpu", f"torch device: {DEVICE_HELP}", read_only=True),
    ParamSpec("dtype", "float32", "model weights dtype", choices=DTYPES, read_only=True),
    ParamSpec(
        "image_topics",
        ["/camera/image_raw"],
        "camera topics; each one's name is the Caption.camera field",
        read_only=True,
    ),
    ParamSpec(
        "image_reliability",
        "auto",
        "camera subscription reliability: auto follows the publishers (reliable "
        "when all of them are, else best effort); per topic: qos_overrides.<topic>.subscription.reliability",
        choices=("auto", "best_effort", "reliable"),
        read_only=True,
    ),
    ParamSpec(
        "compressed",
        False,
        "subscribe to sensor_msgs/CompressedImage on <topic>/compressed instead of Image",
        read_only=True,
    ),
    ParamSpec(
        "max_tiles",
        CAPTION_MAX_TILES,
        "most 448 px tiles per frame (captions and answers)",
        low=1,
        high=MAX_TILES_LIMIT,
    ),
    ParamSpec("prompt", "", "caption prompt (empty: upstream's one-sentence caption prompt)"),
    ParamSpec(
        "caption_rate_hz", 1.0, "captions per second per camera (0: captioning off, services only)", low=0.0, high=30.0
    ),
    ParamSpec(
        "max_new_tokens",
        64,
        "answer length limit for Ask/Describe; captions use upstream's 8..30 tokens capped at this value",
        low=1,
        high=4096,
    ),
    ParamSpec(
        "request_timeout_s",
        600.0,
        "an Ask/Describe request still running after this many seconds is stopped "
        "(0: no limit); requests whose client went away are stopped at once",
        low=0.0,
        high=86400.0,
    ),
    ParamSpec(
        "max_question_tokens", 512, "longest question accepted, in tokens", low=1, high=DEFAULT_MAX_QUESTION_TOKENS
    ),
    ParamSpec(
        "max_pixels",
        DEFAULT_MAX_PIXELS,
        "largest frame accepted (width*height); bigger ones are rejected",
        low=1,
        high=MAX_PIXELS_LIMIT,
    ),
    ParamSpec("publish_debug_image", False, "publish each captioned frame with its caption on ~/debug_image"),
    ParamSpec(
        "debug_inference_delay_s", 0.0, "testing only: extra seconds added to every model call", low=0.0, high=60.0
    ),
)

PARAM_BY_NAME = {p.name: p for p in PARAMS}


def defaults() -> dict[str, Any]:
    """name -> default value (a fresh list for list parameters)."""
    return {p.name: list(p.default) if isinstance(p.default, list) else p.default for p in PARAMS}
