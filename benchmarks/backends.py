"""What the suite runs per backend, behind one small interface.

* ``hf-baseline``: transformers ``generate`` on ``InternVLForConditionalGeneration`` with its default
  dynamic cache, as upstream ``chat()`` calls it (eager Python loop, logits processors on the host side
  of the loop);
* ``torch`` (plain) and ``torch-fast``: the project's engine with the plain or the fast torch backend;
* ``onnx``: the engine with exported engines (another package builds them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ivl_ros.model.engine import (
    CAPTION_PROMPT,
    GenerationSettings,
    PreparedPrompt,
    VisionLanguageEngine,
    collate_prompts,
)
from ivl_ros.model.generation import cut_at_stop
from ivl_ros.model.options import CAPTION_MAX_TILES
from ivl_ros.model.prompt import cut_response


class EngineBench:
    """The project's engine with some backend (plain torch, fast torch, onnx)."""

    def __init__(self, name: str, engine: VisionLanguageEngine, note: str = "") -> None:
        self.name = name
        self.engine = engine
        self.note = note

    def vision(self, pixel_values: torch.Tensor) -> object:
        return self.engine.backend.image_features(pixel_values)

    @property
    def has_vision(self) -> bool:
        return hasattr(self.engine.backend, "image_features")

    def generate(self, prepared: Sequence[PreparedPrompt], settings: GenerationSettings) -> list[list[int]]:
        return [a.token_ids for a in self.engine.run(prepared, settings)]

    def caption(self, frame: np.ndarray, settings: GenerationSettings) -> str:
        return self.engine.caption(frame, max_tiles=CAPTION_MAX_TILES, settings=settings).answer

    def prepare(self, frame: np.ndarray, max_tiles: int) -> PreparedPrompt:
        return self.engine.prepare(frame, CAPTION_PROMPT, max_tiles=max_tiles)


class HFBaseline:
    """transformers ``generate`` with its default cache on the same ``nn.Module`` (upstream chat() style)."""

    name = "hf-baseline"
    note = "transformers generate(), default DynamicCache, SDPA"
    has_vision = True

    def __init__(self, engine: VisionLanguageEngine) -> None:
        self.engine = engine  # only for prepare() (tiling, prompt) and the tokenizer
        self.model = engine.backend.model
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype

    @torch.inference_mode()
    def vision(self, pixel_values: torch.Tensor) -> object:
        return self.model.model.get_image_features(pixel_values=pixel_values.to(self.dtype), return_dict=True)

    @torch.inference_mode()
    def generate(self, prepared: Sequence[PreparedPrompt], settings: GenerationSettings) -> list[list[int]]:
        tok = self.engine.tokenizer
        ids, mask, pv = collate_prompts(prepared, tok.pad_id)
        kwargs = {}
        if pv is not None:
            kwargs["pixel_values"] = torch.from_numpy(pv).to(self.device, self.dtype)
        out = self.model.generate(
            input_ids=torch.from_numpy(ids).to(self.device),
            attention_mask=torch.from_numpy(mask).to(self.device),
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens or None,
            do_sample=False,
            eos_token_id=self.engine.eos_id,
            pad_token_id=tok.pad_id,
            **kwargs,
        )
        return [cut_at_stop(row, self.engine.eos_id) for row in out[:, ids.shape[1] :].cpu().numpy()]

    def caption(self, frame: np.ndarray, settings: GenerationSettings) -> str:
        tokens = self.generate([self.prepare(frame, 6)], settings)[0]
        return cut_response(self.engine.tokenizer.decode(tokens))

    def prepare(self, frame: np.ndarray, max_tiles: int) -> PreparedPrompt:
        return self.engine.prepare(frame, CAPTION_PROMPT, max_tiles=max_tiles)
