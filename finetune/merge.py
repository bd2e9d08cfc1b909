"""Merge a finetune/lora.py adapter into its base model and write a full, deployable checkpoint.

python finetune/merge.py --adapter runs/lora-habitat --out models/InternVL2-2B-habitat [--layout upstream]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune.writer import LAYOUTS, write_full_checkpoint
from ivl_ros.errors import IvlError
from ivl_ros.jsonfile import read_json

TRAINING_CONFIG = "ivl_finetune.json"


def base_of(adapter: Path) -> str:
    """The base checkpoint an adapter was trained on: ivl_finetune.json, else peft's adapter_config.json."""
    record = adapter / TRAINING_CONFIG
    file, key = (
        (record, "base_model") if record.is_file() else (adapter / "adapter_config.json", "base_model_name_or_path")
    )
    if not file.is_file():
        raise IvlError(f"{adapter}: no adapter_config.json; not a finetune/lora.py output directory")
    data = read_json(file, "adapter record")
    if not isinstance(data, dict) or not isinstance(data.get(key), str) or not data[key]:
        raise IvlError(f"{file}: key {key!r}: expected the base checkpoint path; pass --base DIR")
    return data[key]


def merge_adapter(
    adapter: str | Path,
    out: str | Path,
    layout: str = "upstream",
    base: str | None = None,
    max_dynamic_patch: int | None = None,
) -> Path:
    """Load base (fp32) + adapter, fold the LoRA weights in, write the merged checkpoint."""
    from peft import PeftModel

    from ivl_ros.model.checkpoint import load_model
    from ivl_ros.model.defaults import resolve_model_path

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise IvlError(f"{adapter}: no adapter_config.json; not a finetune/lora.py output directory")
    # The base the adapter was trained on (recorded by lora.py), unless --base says otherwise.
    base = resolve_model_path(base or base_of(adapter), log=lambda msg: print(msg, file=sys.stderr))
    if max_dynamic_patch is None and (adapter / TRAINING_CONFIG).is_file():
        max_dynamic_patch = json.loads((adapter / TRAINING_CONFIG).read_text())["config"]["max_dynamic_patch"]
    loaded = load_model(base, device="cpu", dtype="float32")
    merged = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload()
    return write_full_checkpoint(merged, loaded, out, layout=layout, max_dynamic_patch=max_dynamic_patch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python finetune/merge.py",
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--adapter", required=True, help="output directory of finetune/lora.py (adapter_config.json)")
    p.add_argument("--out", required=True, help="new directory for the merged checkpoint")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="upstream",
        help="upstream: original InternVL2 layout + tokenizer files (default); converted: transformers "
        "layout as `ivl convert` writes",
    )
    p.add_argument("--base", default=None, help="base checkpoint (default: the one the adapter was trained on)")
    args = p.parse_args(argv)
    try:
        out = merge_adapter(args.adapter, args.out, args.layout, args.base)
    except IvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged checkpoint written to {out} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
