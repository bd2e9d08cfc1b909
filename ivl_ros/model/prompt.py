"""The ``internlm2-chat`` conversation template and ``<image>`` expansion, as upstream chat() renders them."""

from __future__ import annotations

from collections.abc import Sequence

from ivl_ros.errors import OptionError

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# The system message of upstream's internlm2-chat template (fullwidth comma after 大模型, ASCII ", "
# after InternVL, fullwidth full stop at the end).
INTERNLM2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."

SUPPORTED_TEMPLATES = ("internlm2-chat",)


def check_text(text: object, what: str = "the question") -> str:
    """``text`` if it is a str that encodes as UTF-8; else an OptionError naming the first bad character.

    Bytes that are not UTF-8 reach Python from a command line as lone surrogates (U+DC80..U+DCFF, PEP 383);
    the message gives the original byte."""
    if not isinstance(text, str):
        raise OptionError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise OptionError(f"{what} is not valid UTF-8 text ({bad} at character {exc.start})") from None
    return text


def render_conversation(
    question: str,
    history: Sequence[tuple[str, str]] = (),
    system_message: str = INTERNLM2_SYSTEM_MESSAGE,
    template: str = "internlm2-chat",
) -> str:
    """The prompt string for ``question`` after ``history``, ending with an open assistant turn.

    Separator style MPT with sep ``<|im_end|>`` and no newline after it.
    """
    if template not in SUPPORTED_TEMPLATES:
        raise OptionError(f"template {template!r} is not supported; expected one of {SUPPORTED_TEMPLATES}")
    parts = [f"{IM_START}system\n{system_message}{IM_END}"]
    for user, assistant in history:
        parts.append(f"{IM_START}user\n{user}{IM_END}")
        parts.append(f"{IM_START}assistant\n{assistant}{IM_END}")
    parts.append(f"{IM_START}user\n{question}{IM_END}")
    parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def expand_image_placeholders(prompt: str, num_tiles_per_image: Sequence[int], tokens_per_tile: int) -> str:
    """Replace each ``<image>``, first occurrence first, by ``<img>`` + context tokens + ``</img>``."""
    for num_tiles in num_tiles_per_image:
        if IMAGE_PLACEHOLDER not in prompt:
            raise OptionError(
                f"the prompt has fewer {IMAGE_PLACEHOLDER} placeholders than images ({len(num_tiles_per_image)})"
            )
        tokens = IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END
        prompt = prompt.replace(IMAGE_PLACEHOLDER, tokens, 1)
    return prompt


def chat_prompt(
    question: str,
    num_tiles: int | None,
    tokens_per_tile: int,
    history: Sequence[tuple[str, str]] = (),
    system_message: str = INTERNLM2_SYSTEM_MESSAGE,
    template: str = "internlm2-chat",
) -> tuple[str, str]:
    """Build the full prompt as upstream ``chat()`` does.

    Returns ``(question_as_sent, prompt)``: with an image and no history, ``<image>\\n`` is prepended
    to a question that lacks it; with a history nothing is prepended (the image stays in the first
    turn). ``question_as_sent`` is what upstream stores in the history.
    """
    if num_tiles is not None and not history and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    prompt = render_conversation(question, history, system_message, template)
    if num_tiles is not None:
        prompt = expand_image_placeholders(prompt, [num_tiles], tokens_per_tile)
    return question, prompt


def cut_response(text: str) -> str:
    """Upstream's post-processing of decoded text: cut at the first ``<|im_end|>``, then strip."""
    return text.split(IM_END)[0].strip()
