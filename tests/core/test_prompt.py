"""The internlm2-chat template, piece by piece, and upstream chat()'s <image> handling."""

from __future__ import annotations

from ivl_ros.model.prompt import INTERNLM2_SYSTEM_MESSAGE, chat_prompt, cut_response, render_conversation

SYSTEM = INTERNLM2_SYSTEM_MESSAGE


def test_system_message_exact():
    assert len(SYSTEM) == 59 and len(SYSTEM.encode("utf-8")) == 157
    assert "大模型，英文名叫InternVL, 是一个" in SYSTEM and SYSTEM.endswith("助手。")


def test_one_turn_piece_by_piece():
    pieces = [
        "<|im_start|>",
        "system",
        "\n",
        SYSTEM,
        "<|im_end|>",
        "<|im_start|>",
        "user",
        "\n",
        "Hi?",
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
        "\n",
    ]
    assert render_conversation("Hi?") == "".join(pieces)


def test_no_newline_after_im_end_and_history():
    text = render_conversation("Second?", history=[("<image>\nFirst?", "An answer.")])
    assert "<|im_end|>\n" not in text
    assert text.endswith("<|im_start|>user\nSecond?<|im_end|><|im_start|>assistant\n")
    assert "<|im_start|>assistant\nAn answer.<|im_end|>" in text


def test_image_expansion_and_prepend():
    sent, prompt = chat_prompt("What is this?", num_tiles=3, tokens_per_tile=4)
    assert sent == "<image>\nWhat is this?"
    assert "<img>" + "<IMG_CONTEXT>" * 12 + "</img>\nWhat is this?" in prompt
    # An explicit <image> is kept where the user put it.
    sent, prompt = chat_prompt("Look: <image> now", num_tiles=1, tokens_per_tile=2)
    assert sent == "Look: <image> now" and "Look: <img><IMG_CONTEXT><IMG_CONTEXT></img> now" in prompt
    # With a history nothing is prepended; the first turn's <image> is the one expanded.
    sent, prompt = chat_prompt("And now?", num_tiles=1, tokens_per_tile=2, history=[("<image>\nFirst", "A")])
    assert sent == "And now?" and prompt.count("<img>") == 1
    assert "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nFirst" in prompt


def test_text_only_has_no_image_tokens():
    sent, prompt = chat_prompt("Hello", num_tiles=None, tokens_per_tile=256)
    assert sent == "Hello" and "<img>" not in prompt


def test_cut_response():
    assert cut_response("  A cat.<|im_end|>junk") == "A cat."
