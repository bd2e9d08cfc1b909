"""An InternLM2-compatible tokenizer over the checkpoint's sentencepiece model.

Reproduces upstream's slow ``InternLM2Tokenizer`` (transformers 4.37): the text is first split on the
added/special token strings, each remaining chunk is encoded by sentencepiece on its own (the model has
no dummy prefix), and ``<s>`` is prepended. Decoding with ``skip_special_tokens`` drops the special ids,
decodes the rest with sentencepiece (so invalid UTF-8 byte runs are replaced byte by byte, as upstream)
and applies the ``clean_up_tokenization`` rules that upstream's ``convert_tokens_to_string`` always
applies. transformers' tokenizers-backed LlamaTokenizer differs there (byte fallback and clean-up), so
the exact path is done with sentencepiece directly; it also keeps the ONNX runtime path free of torch.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from ivl_ros.errors import CheckpointError
from ivl_ros.jsonfile import read_json
from ivl_ros.model.validation import check_added_tokens, check_special_tokens_map, check_tokenizer_config, fail

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json")

# Upstream's ``clean_up_tokenization`` replacements, in order.
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text


def _optional_json(path: Path) -> dict:
    return read_json(path, "tokenizer file", CheckpointError) if path.is_file() else {}


class InternLM2Tokenizer:
    """Encode/decode text exactly as upstream InternVL2 does with its slow InternLM2 tokenizer."""

    def __init__(
        self,
        sp_model_proto: bytes,
        added_tokens: dict[str, int],
        special_tokens: Iterable[str],
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str = "</s>",
        unk_token: str = "<unk>",
        source: str = "<memory>",
    ) -> None:
        self.sp = spm.SentencePieceProcessor(model_proto=sp_model_proto)
        self.source = source
        self.sp_size = self.sp.get_piece_size()
        self.added_tokens = dict(added_tokens)
        for content, idx in self.added_tokens.items():
            if idx < self.sp_size and self.sp.id_to_piece(idx) != content:
                raise CheckpointError(
                    f"{source}: added token {content!r} has id {idx}, but the sentencepiece model has "
                    f"{self.sp.id_to_piece(idx)!r} there"
                )
        self.id_to_added = {idx: content for content, idx in self.added_tokens.items()}
        self.special_tokens = set(special_tokens) | {bos_token, eos_token, pad_token, unk_token}
        self.special_ids = {self.token_to_id(t) for t in self.special_tokens}
        self.bos_id = self.token_to_id(bos_token)
        self.eos_id = self.token_to_id(eos_token)
        self.pad_id = self.token_to_id(pad_token)
        self.vocab_size = max([self.sp_size - 1, *self.id_to_added]) + 1
        # Longest first, so that no token is cut by a shorter one that is its prefix.
        splitters = sorted(self.added_tokens, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in splitters) + ")") if splitters else None

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> InternLM2Tokenizer:
        """Load from a checkpoint directory (upstream layout or converted layout)."""
        path = Path(path)
        model_file = path / "tokenizer.model"
        if not model_file.is_file():
            raise CheckpointError(f"{model_file}: missing; the sentencepiece tokenizer model is required")
        proto = model_file.read_bytes()
        if not proto:
            raise CheckpointError(f"{model_file}: file is empty")
        added, special, names, extra = check_tokenizer_config(
            _optional_json(path / "tokenizer_config.json"), path / "tokenizer_config.json"
        )
        if (path / "added_tokens.json").is_file():
            for content, idx in check_added_tokens(
                _optional_json(path / "added_tokens.json"), path / "added_tokens.json"
            ).items():
                added.setdefault(content, idx)
                special.add(content)
        map_names, map_extra = check_special_tokens_map(
            _optional_json(path / "special_tokens_map.json"), path / "special_tokens_map.json"
        )
        defaults = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
        # special_tokens_map.json wins over tokenizer_config.json, as in transformers.
        source = {key: "special_tokens_map.json" if map_names[key] else "tokenizer_config.json" for key in defaults}
        names = {key: map_names[key] or names[key] or default for key, default in defaults.items()}
        special.update(map_extra, extra)
        try:
            sp = spm.SentencePieceProcessor(model_proto=proto)
        except Exception as exc:  # sentencepiece raises RuntimeError with a terse message
            raise CheckpointError(f"{model_file}: not a sentencepiece model ({exc})") from None
        # The control pieces <unk>/<s>/</s> never match raw text in sentencepiece, but upstream's
        # slow tokenizer splits them out as added tokens: register them the same way.
        for key, name in names.items():
            pid = sp.piece_to_id(name)
            if name not in added and sp.id_to_piece(pid) == name:
                added[name] = pid
            elif name not in added and pid == sp.unk_id():
                raise fail(path / source[key], key, "a token of the tokenizer", name)
        return cls(proto, added, special, source=str(path), **names)

    @functools.cached_property
    def max_piece_chars(self) -> int:
        """The most characters one token can stand for: text longer than ``n * max_piece_chars`` characters
        is more than ``n`` tokens, which lets length limits refuse megabytes without tokenizing them."""
        pieces = (self.sp.id_to_piece(i) for i in range(self.sp_size))
        return max(1, *(len(p) for p in pieces), *(len(t) for t in self.added_tokens))

    # -- ids ---------------------------------------------------------------------------------------
    def token_to_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        idx = self.sp.piece_to_id(token)
        if idx == self.sp.unk_id() and token != self.sp.id_to_piece(self.sp.unk_id()):
            raise CheckpointError(f"{self.source}: the tokenizer has no token {token!r}")
        return idx

    def id_to_token(self, idx: int) -> str:
        if idx in self.id_to_added:
            return self.id_to_added[idx]
        if 0 <= idx < self.sp_size:
            return self.sp.id_to_piece(idx)
        raise ValueError(f"token id {idx} is outside the vocabulary (size {self.vocab_size})")

    # -- encode / decode ---------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        chunks = self._split_re.split(text) if self._split_re else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.added_tokens:
                ids.append(self.added_tokens[chunk])
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Decode like upstream: with ``skip_special_tokens`` specials vanish; otherwise each kept
        special token gets a space in front of it (upstream's slow-decode quirk)."""
        out = ""
        run: list[int] = []
        prev_special = False
        for idx in ids:
            idx = int(idx)
            is_special = idx in self.special_ids
            if is_special and skip_special_tokens:
                continue
            if idx in self.id_to_added and idx >= self.sp_size or is_special:
                if not prev_special:
                    out += " "
                out += self.sp.decode(run) + self.id_to_token(idx)
                run = []
                prev_special = True
            else:
                run.append(idx)
                prev_special = False
        out += self.sp.decode(run)
        return clean_up_tokenization(out)

    # -- writing -------------------------------------------------------------------------------------
    def write_hf_files(self, out_dir: Path) -> None:
        """Write tokenizer files usable by transformers' LlamaTokenizer (no remote code)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        decoder = {
            str(idx): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": tok in self.special_tokens,
            }
            for tok, idx in sorted(self.added_tokens.items(), key=lambda kv: kv[1])
        }
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
            "add_prefix_space": False,
            "legacy": False,
            "clean_up_tokenization_spaces": False,
            "bos_token": self.id_to_token(self.bos_id),
            "eos_token": self.id_to_token(self.eos_id),
            "pad_token": self.id_to_token(self.pad_id),
            "unk_token": self.id_to_token(self.sp.unk_id()),
            "added_tokens_decoder": decoder,
            "model_max_length": 32768,
        }
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        added_json = {t: i for t, i in self.added_tokens.items() if i >= self.sp_size}
        (out_dir / "added_tokens.json").write_text(json.dumps(added_json, indent=2, ensure_ascii=False) + "\n")
        stm = {
            "bos_token": config["bos_token"],
            "eos_token": config["eos_token"],
            "pad_token": config["pad_token"],
            "unk_token": config["unk_token"],
            "additional_special_tokens": sorted(
                self.special_tokens - {config["bos_token"], config["eos_token"], config["unk_token"]},
                key=self.token_to_id,
            ),
        }
        (out_dir / "special_tokens_map.json").write_text(json.dumps(stm, indent=2, ensure_ascii=False) + "\n")
