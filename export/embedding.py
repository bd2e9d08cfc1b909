"""The token-embedding table as a .npy file, so that the runtime embeds tokens with numpy (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def export_embedding(model: torch.nn.Module, out_path: Path) -> dict:
    table = model.model.language_model.embed_tokens.weight.detach().float().cpu().numpy()
    # np.save writes a plain header + raw data: the runtime memory-maps it (758 MB at full size).
    np.save(out_path, np.ascontiguousarray(table, dtype=np.float32))
    return {"shape": list(table.shape), "dtype": "float32"}
