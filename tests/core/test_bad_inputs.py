"""Bad checkpoints, images, questions, options and output paths through the `ivl` CLI (issue 18's list).

Every case must end with exit status 2 and one ``ivl: error:`` line that names the file and the key (or the
option), without a traceback. One tiny checkpoint is built per session; each case is a directory of symlinks
to it with one file rewritten. Most cases call ``ivl_ros.cli.main`` in-process (an uncaught exception fails the
test just as a traceback would); a few run the real command in a subprocess.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from ivl_ros.cli import main

REPO = Path(__file__).resolve().parents[2]


# -- building broken checkpoints ----------------------------------------------------------------------------
def variant(src: Path, dst: Path, file: str, content: bytes | None) -> Path:
    """``src`` as symlinks in ``dst``, with ``file`` replaced by ``content`` (None: removed)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != file:
            (dst / f.name).symlink_to(f)
    if content is not None:
        (dst / file).write_bytes(content)
    return dst


def edited(src: Path, dst: Path, file: str, edit: Callable) -> Path:
    data = json.loads((src / file).read_text(encoding="utf-8"))
    result = edit(data)
    return variant(src, dst, file, json.dumps(data if result is None else result).encode())


def put(key: str, value) -> Callable:
    """Set a dotted key (the parents must exist)."""

    def edit(data):
        *parents, leaf = key.split(".")
        for name in parents:
            data = data[name]
        data[leaf] = value

    return edit


def drop(key: str) -> Callable:
    def edit(data):
        *parents, leaf = key.split(".")
        for name in parents:
            data = data[name]
        del data[leaf]

    return edit


def whole(value) -> Callable:
    return lambda _data: value


def both(*edits: Callable) -> Callable:
    def edit(data):
        for e in edits:
            e(data)

    return edit


def run_main(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


def assert_one_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ivl: error:")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# -- config.json, upstream layout: (case id, edit, key named in the error) ------------------------------------
UPSTREAM_CASES = [
    ("hidden_size_string", put("llm_config.hidden_size", "128"), "llm_config.hidden_size"),
    ("layer_norm_eps_word", put("vision_config.layer_norm_eps", "tiny"), "vision_config.layer_norm_eps"),
    ("force_image_size_word", put("force_image_size", "abc"), "force_image_size"),
    ("max_dynamic_patch_word", put("max_dynamic_patch", "twelve"), "max_dynamic_patch"),
    ("downsample_ratio_word", put("downsample_ratio", "half"), "downsample_ratio"),
    ("zero_llm_heads", put("llm_config.num_attention_heads", 0), "llm_config.num_attention_heads"),
    ("zero_patch_size", put("vision_config.patch_size", 0), "vision_config.patch_size"),
    ("kv_heads_not_dividing", put("llm_config.num_key_value_heads", 3), "llm_config.num_key_value_heads"),
    ("negative_vit_layers", put("vision_config.num_hidden_layers", -1), "vision_config.num_hidden_layers"),
    ("negative_llm_layers", put("llm_config.num_hidden_layers", -2), "llm_config.num_hidden_layers"),
    ("zero_llm_layers", put("llm_config.num_hidden_layers", 0), "llm_config.num_hidden_layers"),
    ("llm_config_null", put("llm_config", None), "'llm_config'"),
    ("vision_config_string", put("vision_config", "x"), "'vision_config'"),
    ("vision_config_missing", drop("vision_config"), "'vision_config'"),
    ("llm_hidden_missing", drop("llm_config.hidden_size"), "llm_config.hidden_size"),
    ("architectures_int", put("architectures", 5), "'architectures'"),
    ("architectures_ints", put("architectures", [5]), "'architectures'"),
    ("unknown_llm_act", put("llm_config.hidden_act", "swoosh"), "llm_config.hidden_act"),
    ("unknown_vit_act", put("vision_config.hidden_act", 7), "vision_config.hidden_act"),
    ("rope_scaling_string", put("llm_config.rope_scaling", "x"), "llm_config.rope_scaling"),
    (
        "rope_scaling_type",
        put("llm_config.rope_scaling", {"type": "yarn", "factor": 2.0}),
        "llm_config.rope_scaling.type",
    ),
    (
        "rope_scaling_factor",
        put("llm_config.rope_scaling", {"type": "dynamic", "factor": "2"}),
        "llm_config.rope_scaling.factor",
    ),
    ("rope_scaling_no_factor", put("llm_config.rope_scaling", {"type": "dynamic"}), "llm_config.rope_scaling.factor"),
    ("vit_heads_not_dividing", put("vision_config.hidden_size", 66), "vision_config.num_attention_heads"),
    ("llm_heads_not_dividing", put("llm_config.hidden_size", 130), "llm_config.num_attention_heads"),
    (
        "odd_llm_head_dim",
        both(put("llm_config.hidden_size", 132), put("llm_config.num_attention_heads", 4)),
        "llm_config.num_attention_heads",
    ),
    ("tile_not_patch_multiple", put("force_image_size", 100), "force_image_size"),
    ("ratio_not_whole_shuffle", put("downsample_ratio", 0.3), "downsample_ratio"),
    ("ratio_zero", put("downsample_ratio", 0), "downsample_ratio"),
    ("ratio_bool", put("downsample_ratio", True), "downsample_ratio"),
    ("max_patch_zero", put("max_dynamic_patch", 0), "max_dynamic_patch"),
    ("max_patch_over_limit", put("max_dynamic_patch", 41), "max_dynamic_patch"),
    ("min_over_max_patch", both(put("min_dynamic_patch", 5), put("max_dynamic_patch", 2)), "min_dynamic_patch"),
    ("thumbnail_string", put("use_thumbnail", "yes"), "use_thumbnail"),
    ("ps_version_v1", put("ps_version", "v1"), "ps_version"),
    ("ps_version_missing", drop("ps_version"), "ps_version"),
    ("select_layer", put("select_layer", -2), "select_layer"),
    ("template_unknown", put("template", "vicuna"), "template"),
    ("qk_normalization", put("vision_config.qk_normalization", True), "vision_config.qk_normalization"),
    ("four_channels", put("vision_config.num_channels", 4), "vision_config.num_channels"),
    ("vocab_below_tokenizer", put("llm_config.vocab_size", 10), "llm_config.vocab_size"),
    ("eos_outside_vocab", put("llm_config.eos_token_id", 99999), "llm_config.eos_token_id"),
    ("llm_type_qwen", put("llm_config.model_type", "qwen2"), "llm_config.model_type"),
    ("context_zero", put("llm_config.max_position_embeddings", 0), "llm_config.max_position_embeddings"),
    ("rms_eps_negative", put("llm_config.rms_norm_eps", -1), "llm_config.rms_norm_eps"),
    ("rope_theta_word", put("llm_config.rope_theta", "big"), "llm_config.rope_theta"),
    ("intermediate_float", put("vision_config.intermediate_size", 1.5), "vision_config.intermediate_size"),
    ("bias_string", put("llm_config.bias", "no"), "llm_config.bias"),
    ("kv_heads_zero", put("llm_config.num_key_value_heads", 0), "llm_config.num_key_value_heads"),
    ("norm_type_unknown", put("vision_config.norm_type", "batch_norm"), "vision_config.norm_type"),
    ("no_tile_size", both(put("force_image_size", None), put("vision_config.image_size", None)), "force_image_size"),
    ("vocab_string", put("llm_config.vocab_size", "1033"), "llm_config.vocab_size"),
]


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory) -> Path:
    from ivl_ros.model.checkpoint import convert_checkpoint

    return convert_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("conv") / "c")


@pytest.mark.parametrize("edit,key", [c[1:] for c in UPSTREAM_CASES], ids=[c[0] for c in UPSTREAM_CASES])
def test_malformed_upstream_config(tiny_checkpoint, tmp_path, capsys, edit, key):
    model = edited(tiny_checkpoint, tmp_path / "m", "config.json", edit)
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi", "--max-new-tokens", "2")
    assert_one_error(rc, err, f"{model / 'config.json'}:", key, "expected", "found")


def test_nan_in_config(tiny_checkpoint, tmp_path, capsys):
    text = (tiny_checkpoint / "config.json").read_text().replace('"layer_norm_eps": 1e-06', '"layer_norm_eps": NaN')
    model = variant(tiny_checkpoint, tmp_path / "m", "config.json", text.encode())
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, "config.json", "vision_config.layer_norm_eps", "finite number")


@pytest.mark.parametrize("value", [[1, 2], "text", 3])
def test_config_not_an_object(tiny_checkpoint, tmp_path, capsys, value):
    model = edited(tiny_checkpoint, tmp_path / "m", "config.json", whole(value))
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, "config.json", "top level")


CONVERTED_CASES = [
    ("no_ivl_block", drop("ivl_ros"), "'ivl_ros'"),
    ("incomplete_ivl_block", drop("ivl_ros.tile_size"), "ivl_ros.tile_size"),
    ("ivl_block_string", put("ivl_ros", "x"), "'ivl_ros'"),
    ("template_int", put("ivl_ros.template", 5), "ivl_ros.template"),
    ("tokens_per_tile_disagrees", put("ivl_ros.tokens_per_tile", 17), "ivl_ros.tokens_per_tile"),
    ("image_token_disagrees", put("ivl_ros.image_token_id", 5), "ivl_ros.image_token_id"),
    ("text_heads_string", put("text_config.num_attention_heads", "4"), "text_config.num_attention_heads"),
    ("text_type_qwen", put("text_config.model_type", "qwen2"), "text_config.model_type"),
    ("image_size_unequal", put("vision_config.image_size", [112, 113]), "vision_config.image_size"),
    ("image_token_negative", put("image_token_id", -1), "image_token_id"),
    ("text_vocab_small", put("text_config.vocab_size", 10), "text_config.vocab_size"),
    ("text_kv_heads", put("text_config.num_key_value_heads", 3), "text_config.num_key_value_heads"),
    ("text_config_list", put("text_config", []), "'text_config'"),
]


@pytest.mark.parametrize("edit,key", [c[1:] for c in CONVERTED_CASES], ids=[c[0] for c in CONVERTED_CASES])
def test_malformed_converted_config(converted, tmp_path, capsys, edit, key):
    model = edited(converted, tmp_path / "m", "config.json", edit)
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi", "--max-new-tokens", "2")
    assert_one_error(rc, err, f"{model / 'config.json'}:", key)


# -- tokenizer files and the shard index --------------------------------------------------------------------
TOKENIZER_CASES = [
    ("decoder_list", "tokenizer_config.json", put("added_tokens_decoder", []), "added_tokens_decoder"),
    (
        "decoder_content_int",
        "tokenizer_config.json",
        put("added_tokens_decoder.1024", {"content": 5}),
        "added_tokens_decoder.1024.content",
    ),
    (
        "decoder_id_word",
        "tokenizer_config.json",
        put("added_tokens_decoder.abc", {"content": "<x>"}),
        "added_tokens_decoder.abc",
    ),
    (
        "decoder_special_string",
        "tokenizer_config.json",
        put("added_tokens_decoder.1024", {"content": "<img>", "special": "yes"}),
        "added_tokens_decoder.1024.special",
    ),
    ("tokenizer_config_list", "tokenizer_config.json", whole([1]), "top level"),
    ("bos_token_int", "tokenizer_config.json", put("bos_token", 5), "bos_token"),
    (
        "extra_specials_string",
        "tokenizer_config.json",
        put("additional_special_tokens", "x"),
        "additional_special_tokens",
    ),
    (
        "extra_specials_null_entry",
        "tokenizer_config.json",
        put("additional_special_tokens", [None]),
        "additional_special_tokens.0",
    ),
    ("added_id_string", "added_tokens.json", put("<img>", "1024"), "<img>"),
    ("added_tokens_list", "added_tokens.json", whole(["<img>"]), "top level"),
    ("eos_content_int", "special_tokens_map.json", put("eos_token", {"content": 3}), "eos_token.content"),
    ("eos_unknown_token", "special_tokens_map.json", put("eos_token", "<nonexistent>"), "eos_token"),
]


@pytest.mark.parametrize("file,edit,key", [c[1:] for c in TOKENIZER_CASES], ids=[c[0] for c in TOKENIZER_CASES])
def test_malformed_tokenizer_files(tiny_checkpoint, tmp_path, capsys, file, edit, key):
    model = edited(tiny_checkpoint, tmp_path / "m", file, edit)
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, f"{model / file}:", key)


@pytest.mark.parametrize("file", ["tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"])
def test_tokenizer_file_not_utf8(tiny_checkpoint, tmp_path, capsys, file):
    model = variant(tiny_checkpoint, tmp_path / "m", file, b'{"x": "\xff\xfe"}')
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, f"{model / file}:", "not UTF-8")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    from ivl_ros.model.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("sharded") / "s", shard_bytes=400_000)


INDEX = "model.safetensors.index.json"
INDEX_CASES = [
    ("index_list", whole([]), "top level"),
    ("weight_map_missing", drop("weight_map"), "weight_map"),
    ("weight_map_int_value", lambda d: d["weight_map"].update({next(iter(d["weight_map"])): 5}), "weight_map."),
    (
        "weight_map_escapes_dir",
        lambda d: d["weight_map"].update({next(iter(d["weight_map"])): "../x.safetensors"}),
        "weight_map.",
    ),
]


@pytest.mark.parametrize("edit,key", [c[1:] for c in INDEX_CASES], ids=[c[0] for c in INDEX_CASES])
def test_malformed_shard_index(sharded, tmp_path, capsys, edit, key):
    model = edited(sharded, tmp_path / "m", INDEX, edit)
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, f"{model / INDEX}:", key)


def test_shard_index_not_utf8(sharded, tmp_path, capsys):
    model = variant(sharded, tmp_path / "m", INDEX, b'{"weight_map": {"\xff": "a.safetensors"}}')
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, f"{model / INDEX}:", "not UTF-8")


# -- truncated weights ------------------------------------------------------------------------------------
def truncated(src: Path, dst: Path, file: str, keep: float = 0.5) -> Path:
    data = (src / file).read_bytes()
    return variant(src, dst, file, data[: int(len(data) * keep)])


@pytest.mark.parametrize("layout", ["upstream", "converted", "sharded"])
def test_truncated_safetensors(tiny_checkpoint, converted, sharded, tmp_path, capsys, layout):
    src = {"upstream": tiny_checkpoint, "converted": converted, "sharded": sharded}[layout]
    file = (
        "model.safetensors"
        if layout != "sharded"
        else json.loads((sharded / INDEX).read_text())["weight_map"]["mlp1.1.weight"]
    )
    model = truncated(src, tmp_path / "m", file)
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, f"{model / file}:", "truncated")


def test_convert_of_truncated_checkpoint(tiny_checkpoint, tmp_path, capsys):
    model = truncated(tiny_checkpoint, tmp_path / "m", "model.safetensors", keep=0.9)
    rc, err = run_main(capsys, "convert", str(model), str(tmp_path / "out"))
    assert_one_error(rc, err, "model.safetensors", "truncated")
    assert not (tmp_path / "out").exists()


def test_header_only_safetensors(tiny_checkpoint, tmp_path, capsys):
    model = variant(tiny_checkpoint, tmp_path / "m", "model.safetensors", b"\x10\x00\x00")
    rc, err = run_main(capsys, "ask", "--model", str(model), "--question", "hi")
    assert_one_error(rc, err, "model.safetensors", "truncated")


# -- images ---------------------------------------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one small (truncated) data chunk: a decompression bomb
    as far as the header is concerned, 60 bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# 5000x5000 is over max_pixels (4096 * 4096) only; the others are over PIL's own limit too, which PIL enforces
# inside Image.open: its error must not surface either.
BOMBS = [(5000, "5000x5000 = 25000000 pixels"), (20000, "400000000 pixels"), (100000, "10000000000 pixels")]


@pytest.mark.parametrize("command", ["ask", "caption"])
@pytest.mark.parametrize("side,shown", BOMBS)
def test_bomb_images(tiny_checkpoint, tmp_path, capsys, command, side, shown):
    image = tmp_path / "bomb.png"
    image.write_bytes(png_header(side, side))
    extra = ["--question", "hi"] if command == "ask" else []
    rc, err = run_main(capsys, command, "--model", str(tiny_checkpoint), "--image", str(image), *extra)
    assert_one_error(rc, err, str(image), shown, "over max_pixels=16777216")
    assert "DecompressionBomb" not in err and "decompression bomb" not in err


def test_bomb_image_in_eval_caption(tiny_checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "bomb.png").write_bytes(png_header(20000, 20000))
    annotations = tmp_path / "captions.json"
    annotations.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "bomb.png"}],
                "annotations": [{"id": 1, "image_id": 1, "caption": "a room"}],
            }
        )
    )
    rc, err = run_main(
        capsys,
        "eval-caption",
        "--model",
        str(tiny_checkpoint),
        "--images",
        str(images),
        "--annotations",
        str(annotations),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    )
    assert_one_error(rc, err, "bomb.png", "400000000 pixels", "max_pixels")


def test_engine_refuses_bombs_from_every_input(tiny_engine, tmp_path):
    import numpy as np
    from PIL import Image

    from ivl_ros.errors import ImageError
    from ivl_ros.model.images import check_image_file, load_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100000, 100000))
    with pytest.raises(ImageError, match="10000000000 pixels"):
        check_image_file(bomb)
    bomb.write_bytes(png_header(300, 200))
    assert check_image_file(bomb) == (300, 200)
    with pytest.raises(ImageError, match="300x200 = 60000 pixels, over max_pixels=100"):
        check_image_file(bomb, max_pixels=100)
    with pytest.raises(ImageError, match="over max_pixels=100"):
        load_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)
    with pytest.raises(ImageError, match="over max_pixels=100"):
        load_image(Image.new("RGB", (20, 20)), max_pixels=100)
    assert load_image(np.zeros((10, 10, 3), np.uint8), max_pixels=100).size == (10, 10)


# -- questions ---------------------------------------------------------------------------------------------
def test_question_not_utf8_subprocess(tiny_checkpoint):
    proc = subprocess.run(
        [sys.executable, "-m", "ivl_ros.cli", "ask", "--model", str(tiny_checkpoint), "--question", b"caf\xe9 \xff?"],
        capture_output=True,
        timeout=300,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert_one_error(proc.returncode, err, "question", "not valid UTF-8", "byte 0xe9")


MEASURE = """
import resource, sys
from ivl_ros.cli import main
rc = main(["ask", "--model", sys.argv[1], "--question", "robot chair table " * int(sys.argv[2])])
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize("repeats", [2300, 6000])  # ~40k characters (tokenized, then refused), ~100k (by length)
def test_long_question_refused_with_bounded_memory(tiny_checkpoint, repeats):
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tiny_checkpoint), str(repeats)], capture_output=True, text=True, timeout=300
    )
    assert_one_error(proc.returncode, proc.stderr, "question", "max_question_tokens=4096")
    peak_kb = int(proc.stderr.split("peak_rss_kb")[1].split()[0])
    assert peak_kb < 1024 * 1024, f"peak RSS {peak_kb} kB"


def test_prompt_length_rule_is_public(tiny_engine):
    from ivl_ros.errors import OptionError

    assert tiny_engine.check_prompt_length("What is ahead?") == len(
        tiny_engine.tokenizer.encode("What is ahead?", add_bos=False)
    )
    with pytest.raises(OptionError, match="max_question_tokens=3"):
        tiny_engine.check_prompt_length("What is ahead of the robot?", max_tokens=3)
    with pytest.raises(OptionError, match="characters"):  # refused by its length, never tokenized
        tiny_engine.check_prompt_length("x" * 10_000_000, max_tokens=8)
    with pytest.raises(OptionError, match="history turn 0 answer"):
        tiny_engine.check_prompt_length("ok", history=[("hi", "\udcff")])


# -- options ---------------------------------------------------------------------------------------------------
OPTION_CASES = [
    (["--seed", "-5"], "--seed"),
    (["--seed", "1.5"], "--seed"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "0", "--do-sample"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "nan"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--max-tiles", "41"], "--max-tiles"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--device", "tpu"], "--device"),
    (["--dtype", "int8"], "--dtype"),
    (["--attention", "flash"], "--attention"),
    (["--backend", "tensorflow"], "--backend"),
]


@pytest.mark.parametrize("extra,option", OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_bad_options(tiny_checkpoint, capsys, extra, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "--model", str(tiny_checkpoint), "--question", "hi", *extra])
    assert_one_error(exit_info.value.code, capsys.readouterr().err, option)


def test_bad_option_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "ivl_ros.cli", "ask", "--question", "hi", "--temperature", "nan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_error(proc.returncode, proc.stderr, "--temperature", "not a finite number")


# -- output paths ------------------------------------------------------------------------------------------
@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


def test_convert_into_existing_file(tiny_checkpoint, a_file, capsys):
    rc, err = run_main(capsys, "convert", str(tiny_checkpoint), str(a_file))
    assert_one_error(rc, err, str(a_file), "not a directory")


def test_convert_below_a_file(tiny_checkpoint, a_file, capsys):
    rc, err = run_main(capsys, "convert", str(tiny_checkpoint), str(a_file / "sub" / "out"))
    assert_one_error(rc, err, str(a_file), "is a file")


def test_convert_into_non_empty_dir(tiny_checkpoint, a_file, capsys):
    rc, err = run_main(capsys, "convert", str(tiny_checkpoint), str(a_file.parent))
    assert_one_error(rc, err, str(a_file.parent), "not empty")


def test_convert_into_unwritable_place(tiny_checkpoint, capsys):
    # /proc refuses new directories even to root (who passes every permission check).
    rc, err = run_main(capsys, "convert", str(tiny_checkpoint), "/proc/ivl-convert-test/out")
    assert_one_error(rc, err, "/proc/ivl-convert-test", "cannot be created")


@pytest.mark.parametrize("out", ["{file}", "{file}/engines", "/proc/ivl-engines-test"])
def test_build_engines_bad_out(tiny_checkpoint, a_file, out):
    out = out.format(file=a_file)
    proc = subprocess.run(
        [sys.executable, "export/build_engines.py", "--model", str(tiny_checkpoint), "--out", out, "--trt", "off"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--out" in proc.stderr and out.split("/engines")[0] in proc.stderr
    assert a_file.read_text() == "x"


def test_good_copy_still_loads(tiny_checkpoint, tmp_path, capsys):
    """The symlinked copies are a fair test bed: an unedited one answers."""
    model = edited(tiny_checkpoint, tmp_path / "m", "config.json", lambda d: None)
    assert main(["ask", "--model", str(model), "--question", "hi", "--max-new-tokens", "2", "--json"]) == 0
