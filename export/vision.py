"""Vision graph: InternViT + pixel shuffle + projector as one ONNX model with a dynamic tile axis.

pixel_values float32 [tiles, 3, S, S] -> image_features float32 [tiles, tokens_per_tile, text_hidden].
For fp16/bf16 the weights and compute are in that type but the graph keeps float32 inputs/outputs
(casts inside), so runtimes feed the same arrays whatever the precision; TensorRT-RTX takes its
precision from the ONNX tensor types (strongly typed networks).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

VISION_INPUT = "pixel_values"
VISION_OUTPUT = "image_features"
OPSET = 20
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class VisionWrapper(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(self.dtype), return_dict=True)
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return features.float()


def sample_pixels(tiles: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalised-range random tiles (ImageNet normalisation gives roughly [-2.1, 2.6])."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 2.5, size=(tiles, 3, size, size)).astype(np.float32)


def export_vision(model: torch.nn.Module, tile_size: int, max_tiles_total: int, precision: str,
                  out_path: Path) -> dict:
    """Export with the dynamo exporter; the sample has 2 tiles because a 1-tile sample silently fixes the axis."""
    dtype = TORCH_DTYPES[precision]
    device = next(model.parameters()).device
    vision_model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    wrapper = VisionWrapper(vision_model, dtype).eval()
    sample = torch.from_numpy(sample_pixels(2, tile_size)).to(device)
    tiles = torch.export.Dim("tiles", min=1, max=max(2, max_tiles_total))
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(wrapper, (sample,), str(out_path), dynamo=True, opset_version=OPSET,
                          input_names=[VISION_INPUT], output_names=[VISION_OUTPUT],
                          dynamic_shapes=({0: tiles},), external_data=True, verbose=False)
    import onnx

    # check_model on the path so that external data (written by default) is found.
    onnx.checker.check_model(str(out_path))
    return {"inputs": {VISION_INPUT: ["tiles", 3, tile_size, tile_size]},
            "outputs": {VISION_OUTPUT: ["tiles", None, None]}, "opset": OPSET}


def compare_vision(model: torch.nn.Module, onnx_path: Path, tile_size: int, tile_counts: list[int],
                   providers: list[str]) -> dict:
    """Max abs diff ORT vs torch fp32 per tile count (torch in the model's own dtype/device)."""
    from ivl_ros.model.backends.onnx_backend import make_session

    session = make_session(onnx_path, providers)  # the runtime's options (CUDA: no TF32)
    device = next(model.parameters()).device
    diffs, scale, shapes = {}, 0.0, {}
    for n in tile_counts:
        pv = sample_pixels(n, tile_size, seed=n)
        with torch.no_grad():
            out = model.model.get_image_features(pixel_values=torch.from_numpy(pv).to(device), return_dict=True)
            ref = (out.pooler_output if hasattr(out, "pooler_output") else out).float().cpu().numpy()
        got = session.run([VISION_OUTPUT], {VISION_INPUT: pv})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"vision ONNX output shape {got.shape} != torch {ref.shape} at {n} tiles")
        diffs[str(n)] = float(np.abs(got - ref).max())
        scale = max(scale, float(np.abs(ref).max()))
        shapes[str(n)] = list(got.shape)
    return {"max_abs_diff": max(diffs.values()), "max_abs_diff_by_tiles": diffs, "max_abs_value": scale,
            "output_shapes": shapes, "provider": providers[0]}
