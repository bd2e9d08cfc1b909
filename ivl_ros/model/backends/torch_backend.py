"""The torch backend: transformers' InternVLForConditionalGeneration with a dynamic KV cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from ivl_ros.model.checkpoint import LoadedModel
from ivl_ros.model.compat import cache_kwargs
from ivl_ros.model.generation import upstream_position_ids
from ivl_ros.model.splice import splice_image_features

if TYPE_CHECKING:
    from transformers import PreTrainedConfig


class TorchSession:
    """One generation request on the torch model; keeps the KV cache between steps."""

    def __init__(
        self, backend: TorchBackend, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None
    ) -> None:
        self.backend = backend
        dev = backend.device
        self.input_ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(dev)
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        self.mask = torch.from_numpy(mask).to(dev)
        self.prefill_positions = torch.from_numpy(upstream_position_ids(mask)).to(dev)
        self.pixel_values = pixel_values
        self.cache = None
        self.positions: torch.Tensor | None = None

    @torch.inference_mode()
    def prefill(self) -> np.ndarray:
        embeds = self.backend.embed_prompt(self.input_ids, self.pixel_values)
        self.positions = self.prefill_positions
        return self._forward(embeds, self.positions)

    @torch.inference_mode()
    def step(self, next_ids: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.asarray(next_ids, dtype=np.int64)).to(self.backend.device)[:, None]
        embeds = self.backend.language_model.embed_tokens(ids)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        assert self.positions is not None, "prefill() first"
        self.positions = self.positions[:, -1:] + 1
        return self._forward(embeds, self.positions)

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
        from transformers import DynamicCache

        if self.cache is None:
            self.cache = DynamicCache(config=cast("PreTrainedConfig", self.backend.model.config.text_config))
        lm = self.backend.language_model
        out = lm(
            inputs_embeds=embeds,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(lm, self.cache),
        )
        logits = self.backend.model.lm_head(out.last_hidden_state[:, -1, :])
        return logits.float().cpu().numpy()


class TorchBackend:
    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.language_model = self.model.model.language_model
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self.image_token_id = loaded.spec.image_token_id

    @torch.inference_mode()
    def image_features(self, pixel_values: np.ndarray | torch.Tensor) -> torch.Tensor:
        """ViT + pixel shuffle + projector: (tiles, 3, S, S) -> (tiles, tokens_per_tile, hidden)."""
        pv = torch.as_tensor(pixel_values).to(self.device, self.dtype)
        out = self.model.model.get_image_features(pixel_values=pv, return_dict=True)
        return cast(torch.Tensor, getattr(out, "pooler_output", out))

    def embed_prompt(self, input_ids: torch.Tensor, pixel_values: np.ndarray | None) -> torch.Tensor:
        """Token embeddings with every image-context position replaced, in order, by image features."""
        embeds = self.language_model.embed_tokens(input_ids).clone()
        return splice_image_features(
            embeds, input_ids, self.image_token_id, pixel_values, lambda pv: self.image_features(pv).to(embeds.dtype)
        )

    def session(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None
    ) -> TorchSession:
        return TorchSession(self, input_ids, attention_mask, pixel_values)
