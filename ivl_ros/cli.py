"""The ``ivl`` command: tiles, ask, caption, convert, make-tiny (+ plug-in subcommands).

User errors print one line ``ivl: error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ivl_ros.errors import IvlError, OptionError
from ivl_ros.model.options import (
    DTYPES,
    UPSTREAM_MAX_TILES,
    add_generation_options,
    add_max_tiles_option,
    add_model_options,
    generation_settings,
    int_range,
    load_engine,
)

# Subcommands that live with their feature; each module has add_parser(subparsers) and run(args) -> int.
PLUGIN_COMMANDS = {"eval-caption": "ivl_ros.eval.command"}


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WxH (e.g. 640x480)")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1x1")
    return w, h


class IvlArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's one error format: the usage, then ``ivl: error: ...``, exit status 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(
            2,
            f"ivl: error: {self.prog.removeprefix('ivl ')}: {message}\n"
            if self.prog != "ivl"
            else f"ivl: error: {message}\n",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = IvlArgumentParser(prog="ivl", description="InternVL2 on the robot: tiling, VQA, captions.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiles", help="show the dynamic tile grid chosen for image sizes")
    p.add_argument("--tile-size", type=int_range(1), default=448)
    add_max_tiles_option(p, UPSTREAM_MAX_TILES, str(UPSTREAM_MAX_TILES))
    p.add_argument("--size", type=_size, action="append", required=True, help="WxH (repeatable)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("ask", help="answer a question about an image (or text only)")
    add_model_options(p)
    add_generation_options(p, caption=False)
    p.add_argument("--image", type=Path, help="image file (none: a text-only question)")
    p.add_argument("--question", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("caption", help="caption an image with the upstream caption-eval prompt and settings")
    add_model_options(p)
    add_generation_options(p, caption=True)
    p.add_argument("--image", type=Path, required=True, help="image file")
    p.add_argument("--prompt", help="override the caption prompt")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("convert", help="write a transformers-layout copy of an upstream checkpoint")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--dtype", choices=DTYPES, help="default: as stored")

    p = sub.add_parser("make-tiny", help="write a tiny random InternVL2 checkpoint (upstream layout)")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)

    for module_name in PLUGIN_COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        module.add_parser(sub)
    return parser


def _plugin_handler(command: str):
    module = importlib.import_module(PLUGIN_COMMANDS[command])
    return module.run


def _say(message: str) -> None:
    print(f"ivl: {message}", file=sys.stderr)


def _cmd_tiles(args: argparse.Namespace) -> int:
    from ivl_ros.model.tiling import dynamic_tile_grid

    rows = []
    for w, h in args.size:
        g = dynamic_tile_grid(w, h, args.tile_size, args.max_tiles)
        rows.append({"size": [w, h], "grid": [g.cols, g.rows], "num_tiles": g.num_tiles})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            thumb = " + thumbnail" if r["num_tiles"] > r["grid"][0] * r["grid"][1] else ""
            print(f"{r['size'][0]}x{r['size'][1]}: {r['grid'][0]}x{r['grid'][1]}{thumb} = {r['num_tiles']} tiles")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.min_new_tokens > args.max_new_tokens:
        raise OptionError(f"--min-new-tokens ({args.min_new_tokens}) exceeds --max-new-tokens ({args.max_new_tokens})")
    settings = generation_settings(args)
    engine = load_engine(args, log=None if args.json else _say)
    if args.command == "caption":
        answer = engine.caption(args.image, max_tiles=args.max_tiles, prompt=args.prompt, settings=settings)
    else:
        answer = engine.ask(args.image, args.question, max_tiles=args.max_tiles, settings=settings)
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        print(answer.answer)
        print(
            f"[{engine.model_id}: {len(answer.token_ids)} tokens, {answer.num_tiles} tiles, "
            f"{answer.latency_ms:.0f} ms]",
            file=sys.stderr,
        )
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ivl_ros.model.checkpoint import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, dtype=args.dtype)
    print(f"wrote {out}")
    return 0


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    from ivl_ros.model.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(args.dir, seed=args.seed)
    print(f"wrote tiny InternVL2 checkpoint to {out}")
    return 0


COMMANDS = {
    "tiles": _cmd_tiles,
    "ask": _cmd_generate,
    "caption": _cmd_generate,
    "convert": _cmd_convert,
    "make-tiny": _cmd_make_tiny,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or _plugin_handler(args.command)
    try:
        return handler(args)
    except IvlError as exc:
        print(f"ivl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ivl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
