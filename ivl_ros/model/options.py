"""The choices, limits and defaults every front end shares, and the argparse options built from them.

One place for: backends, dtypes, attention modes, devices, the tile limit, the caption defaults, the image and
prompt limits and the sampling ranges. The ``ivl`` command, ``ivl eval-caption``, ``export/build_engines.py``,
``finetune/lora.py``, the benchmark suite and the node's parameter table (``ivl_ros/node/params.py``) are all
built from these names; :class:`~ivl_ros.model.generation.GenerationSettings` checks the same ranges.

Torch-free and import-light: argparse types and constants only.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path

# -- choices ---------------------------------------------------------------------------------------------
BACKENDS = ("torch", "onnx", "trt")
DTYPES = ("float32", "bfloat16", "float16")
# exact: upstream-identical numerics (eager, InternLM2's score scaling); eager / sdpa: transformers' kernels.
ATTENTION_MODES = ("exact", "eager", "sdpa")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
DEVICE_HELP = "cpu, cuda or cuda:N"

# -- limits ----------------------------------------------------------------------------------------------
MAX_TILES_LIMIT = 40  # upstream evaluates InternVL2 with up to 40 tiles
UPSTREAM_MAX_TILES = 12  # upstream's max_dynamic_patch default (checkpoint configs, export profile)
DEFAULT_MAX_PIXELS = 4096 * 4096  # largest image accepted (width * height), checked before decoding
MAX_PIXELS_LIMIT = 2**31 - 1
# Text a request may add to the prompt (question + history), in tokens: the engine's default cap, enforced
# before the prompt is built. Attention memory grows with the square of the prompt length; the whole prompt
# is also checked against the model's context (``max_position_embeddings``).
DEFAULT_MAX_QUESTION_TOKENS = 4096
SEED_MAX = 2**32 - 1  # the usual seed range (numpy RandomState, most tools)

# -- defaults --------------------------------------------------------------------------------------------
# Upstream caption evaluation (caption-coco): at most 6 tiles, greedy, 8..30 new tokens.
CAPTION_MAX_TILES = 6
CAPTION_MIN_NEW_TOKENS = 8
CAPTION_MAX_NEW_TOKENS = 30
# Upstream chat(): generation_config max_new_tokens 1024.
ASK_MAX_NEW_TOKENS = 1024
TOP_K_DEFAULT = 50


# -- argparse types --------------------------------------------------------------------------------------
def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi`` (``hi`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (expected {bound})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); nan/inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        below = lo is not None and (value <= lo if lo_open else value < lo)
        if below or (hi is not None and value > hi):
            left = "(" if lo_open else "["
            bound = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{value} is out of range (expected {bound})")
        return value

    parse.__name__ = "number"
    return parse


def device_name(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA exists is checked when the model loads)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"device {text!r} is not one of {DEVICE_HELP}")
    return text


def check_device_name(device: str) -> str:
    """The same rule for values that do not come through argparse (node parameters, Python callers)."""
    from ivl_ros.errors import OptionError

    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise OptionError(f"device {device!r} is not one of {DEVICE_HELP}")
    return device


# -- option groups ---------------------------------------------------------------------------------------
def add_model_options(
    p: argparse.ArgumentParser,
    *,
    dtype_default: str | None = "float32",
    dtype_choices: tuple[str, ...] = DTYPES,
    attention: bool = True,
    backend: bool = True,
    device_default: str = "cpu",
) -> None:
    """--model (default: the default-model rule), --device, --dtype, [--attention], [--backend, --engines]."""
    p.add_argument(
        "--model",
        type=Path,
        help="checkpoint directory (upstream or converted layout); default: $IVL_MODEL or the embedded demo model",
    )
    p.add_argument(
        "--device", type=device_name, default=device_default, help=f"{DEVICE_HELP} (default {device_default})"
    )
    dtype_help = f"default {dtype_default}" if dtype_default else "default: bfloat16 on CUDA, float32 on CPU"
    p.add_argument("--dtype", default=dtype_default, choices=dtype_choices, help=dtype_help)
    if attention:
        p.add_argument(
            "--attention",
            choices=ATTENTION_MODES,
            help="attention kernels (default: exact on CPU float32, sdpa otherwise)",
        )
    if backend:
        p.add_argument("--backend", default="torch", choices=BACKENDS)
        p.add_argument(
            "--engines",
            type=Path,
            help="exported engines directory (for --backend onnx/trt; "
            "default: <checkpoint>-engines next to the checkpoint)",
        )


def load_engine(args: argparse.Namespace, log: Callable[[str], None] | None):
    """The :class:`VisionLanguageEngine` for options added by :func:`add_model_options` (with its backend
    options); ``log`` gets the demo-model line when no --model was given."""
    from ivl_ros.model.defaults import resolve_model_path
    from ivl_ros.model.engine import VisionLanguageEngine

    return VisionLanguageEngine.load(
        resolve_model_path(args.model, log=log),
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        engines_path=args.engines,
        attention=args.attention,
    )


def add_max_tiles_option(p: argparse.ArgumentParser, default: int | None, help_default: str) -> None:
    p.add_argument(
        "--max-tiles",
        type=int_range(1, MAX_TILES_LIMIT),
        default=default,
        help=f"maximum dynamic tiles, 1..{MAX_TILES_LIMIT} (default: {help_default})",
    )


def add_generation_options(p: argparse.ArgumentParser, *, caption: bool) -> None:
    """Tiles, lengths and sampling; ``caption``: upstream's caption-eval defaults instead of chat()'s."""
    add_max_tiles_option(
        p,
        CAPTION_MAX_TILES if caption else None,
        str(CAPTION_MAX_TILES) if caption else "the checkpoint's max_dynamic_patch",
    )
    p.add_argument(
        "--max-new-tokens", type=int_range(1), default=CAPTION_MAX_NEW_TOKENS if caption else ASK_MAX_NEW_TOKENS
    )
    p.add_argument("--min-new-tokens", type=int_range(0), default=CAPTION_MIN_NEW_TOKENS if caption else 0)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float_range(0.0, lo_open=True), default=1.0, help="> 0 (default 1.0)")
    p.add_argument("--top-p", type=float_range(0.0, 1.0, lo_open=True), default=1.0, help="(0, 1] (default 1.0)")
    p.add_argument("--top-k", type=int_range(0), default=TOP_K_DEFAULT, help=f"0 disables it (default {TOP_K_DEFAULT})")
    p.add_argument("--seed", type=int_range(0, SEED_MAX), help=f"sampling seed, 0..{SEED_MAX}")


def generation_settings(args: argparse.Namespace):
    """The :class:`GenerationSettings` for options added by :func:`add_generation_options` (checked)."""
    from ivl_ros.model.generation import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    ).validated()
