"""InternLM2 tokenizer behaviour: BOS, chunking on special tokens, byte fallback, upstream decode."""

from __future__ import annotations

import pytest

from ivl_ros.model.tokenizer import InternLM2Tokenizer, clean_up_tokenization

FUZZ = [
    "A red chair on the left.",
    "  two  spaces\tand tabs\n\nnewlines ",
    "你好，世界。机器人看到一张桌子",
    "emoji 😀🤖 and combining e\u0301",
    "NUL\x00byte",
    "U+2581 \u2581 piece marker",
    "<|im_end",
    "<img",
    "< img>",
    "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n",
    "<s>inside</s> text <unk>",
    "x<IMG_CONTEXT><IMG_CONTEXT>y",
    "<img></img><quad></quad><ref></ref><box></box>",
    "digits 1234567890 and 3.14",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def tok(tiny_checkpoint) -> InternLM2Tokenizer:
    return InternLM2Tokenizer.from_dir(tiny_checkpoint)


def test_bos_and_special_ids(tok):
    ids = tok.encode("hello")
    assert ids[0] == tok.bos_id == 1
    assert tok.encode("hello", add_bos=False) == ids[1:]
    for special in ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<s>", "</s>", "<unk>"]:
        assert tok.encode(special, add_bos=False) == [tok.token_to_id(special)]


def test_chunks_are_encoded_separately(tok):
    # Upstream splits on special strings first, then runs sentencepiece on each chunk on its own.
    text = "a red chair<|im_end|>a red chair"
    chunk = tok.sp.encode("a red chair")
    assert tok.encode(text, add_bos=False) == chunk + [tok.token_to_id("<|im_end|>")] + chunk


def test_no_dummy_prefix(tok):
    assert not tok.sp.id_to_piece(tok.encode("chair", add_bos=False)[0]).startswith("\u2581")


@pytest.mark.parametrize("text", [t for t in FUZZ if "<" not in t and "\u2581" not in t])
def test_round_trip_plain_text(tok, text):
    assert tok.decode(tok.encode(text)) == clean_up_tokenization(text)


def test_piece_marker_decodes_to_space(tok):
    # U+2581 is sentencepiece's space marker: upstream (sentencepiece decode) turns it into a space too.
    assert tok.decode(tok.encode("a\u2581b")) == "a b"


def test_byte_fallback(tok):
    ids = tok.encode("🤖", add_bos=False)
    assert all(tok.sp.id_to_piece(i).startswith("<0x") for i in ids) and len(ids) == 4
    assert tok.decode(ids) == "🤖"
    # An invalid UTF-8 run: only the bad bytes become U+FFFD (sentencepiece semantics, as upstream).
    bad = [tok.sp.piece_to_id("<0xF0>"), tok.sp.piece_to_id("<0x41>")]
    assert tok.decode(bad) == "\ufffdA"


def test_decode_skips_specials_and_cleans_up(tok):
    ids = tok.encode("<|im_start|>assistant\nIt is a cat .<|im_end|>")
    assert tok.decode(ids) == "assistant\nIt is a cat."
    assert "<|im_end|>" in tok.decode(ids, skip_special_tokens=False)


def test_matches_transformers_llama_tokenizer_ids(tok, tmp_path):
    """transformers' LlamaTokenizer with upstream's settings is an independent reference for the ids."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    tok.write_hf_files(tmp_path)
    hf = transformers.LlamaTokenizer.from_pretrained(tmp_path, add_prefix_space=False, add_bos_token=True)
    for text in FUZZ:
        assert hf(text)["input_ids"] == tok.encode(text), text
