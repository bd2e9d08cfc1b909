"""Vision graph: InternViT + pixel shuffle + projector as one ONNX model with a dynamic tile axis.

pixel_values float32 [tiles, 3, S, S] -> image_features [tiles, tokens_per_tile, text_hidden].
For fp16/bf16 the weights and compute are in that type but the input stays float32 (cast inside), so
runtimes feed the tiler's arrays whatever the precision. Two attention forms:

* ``plain`` (fp32, and what TensorRT parses): the exporter's MatMul/Softmax/MatMul; TensorRT fuses it;
* ``fused`` (fp16/bf16 for ONNX Runtime): each attention is one com.microsoft MultiHeadAttention node
  (flash / memory-efficient attention on CUDA) instead of 1025x1025 score matrices per head in memory.
  The output is then float16 for fp16 (half the device-to-host bytes; numpy has no bfloat16, so bf16
  graphs return float32).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

VISION_INPUT = "pixel_values"
VISION_OUTPUT = "image_features"
OPSET = 20
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FUSED_ATTENTION = "ivl_onnx_mha"  # the transformers attention-interface name the fused export registers


class VisionWrapper(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.out_dtype = out_dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(self.dtype), return_dict=True)
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return features.to(self.out_dtype)


# -- fused attention: a torch custom op that the exporter translates to MultiHeadAttention -----------------
@torch.library.custom_op("ivl_export::multi_head_attention", mutates_args=())
def multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """(batch, seq, heads*dim) q/k/v -> (batch, seq, heads*dim): unmasked attention, what the op computes."""
    b, s, width = query.shape
    split = lambda x: x.reshape(b, x.shape[1], num_heads, width // num_heads).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(query), split(key), split(value), scale=scale)
    return out.transpose(1, 2).reshape(b, s, width)


@multi_head_attention.register_fake
def _(query, key, value, num_heads, scale):
    return torch.empty_like(query)


def _fused_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function (q/k/v as (batch, heads, seq, dim)) over the custom op."""
    b, heads, s, d = query.shape
    flat = lambda x: x.transpose(1, 2).reshape(b, x.shape[2], heads * d)  # noqa: E731
    out = torch.ops.ivl_export.multi_head_attention(flat(query), flat(key), flat(value), heads, float(scaling))
    return out.reshape(b, s, heads, d), None


def _translation_table() -> dict:
    """The exporter's translation of the custom op: one com.microsoft MultiHeadAttention node."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    # onnxscript builds nodes from ONNX schemas; ONNX Runtime's contrib schemas are not in onnx's registry,
    # so the one used here is registered (inputs/attributes as ONNX Runtime defines them, the ones we use).
    if not onnx.defs.has("MultiHeadAttention", "com.microsoft"):
        onnx.defs.register_schema(
            OpSchema(
                "MultiHeadAttention",
                "com.microsoft",
                1,
                inputs=[OpSchema.FormalParameter(name, "T") for name in ("query", "key", "value")],
                outputs=[OpSchema.FormalParameter("output", "T")],
                type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
                attributes=[
                    OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads"),
                    OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "score scale"),
                ],
            )
        )
    mha = onnxscript.values.Opset("com.microsoft", 1).MultiHeadAttention

    def translate(query, key, value, num_heads: int, scale: float):
        return mha(query, key, value, num_heads=num_heads, scale=scale)

    return {torch.ops.ivl_export.multi_head_attention.default: translate}


@contextmanager
def _without_language_model(model: torch.nn.Module):
    """Hide the LLM and head (most of the weights) while the vision half is copied."""
    lm, head = model.model.language_model, model.lm_head
    model.model.language_model, model.lm_head = None, None
    try:
        yield
    finally:
        model.model.language_model, model.lm_head = lm, head


class Float32Conv(torch.nn.Module):
    """A convolution computed in float32 and returned in the surrounding dtype: ONNX Conv has no bfloat16 before
    opset 22, and the patch embedding is 0.1% of the ViT's work."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv.float()
        self.dtype = torch.bfloat16

    @property
    def weight(self) -> torch.Tensor:  # the patch embedding casts its input to ``projection.weight.dtype``
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float()).to(self.dtype)


def vision_copy(model: torch.nn.Module, precision: str, attention: str) -> torch.nn.Module:
    """The model itself (fp32, plain) or a copy of its vision half in ``precision`` with ``attention``."""
    if precision == "fp32" and attention == "plain":
        return model
    from transformers import AttentionInterface

    with _without_language_model(model):
        copied = copy.deepcopy(model).to(TORCH_DTYPES[precision])
    if precision == "bf16":
        patches = copied.model.vision_tower.embeddings.patch_embeddings
        patches.projection = Float32Conv(patches.projection)
    if attention == "fused":
        AttentionInterface.register(FUSED_ATTENTION, _fused_attention)
        copied.model.vision_tower.config._attn_implementation = FUSED_ATTENTION
    return copied


def sample_pixels(tiles: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalised-range random tiles (ImageNet normalisation gives roughly [-2.1, 2.6])."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 2.5, size=(tiles, 3, size, size)).astype(np.float32)


def export_vision(
    model: torch.nn.Module,
    tile_size: int,
    max_tiles_total: int,
    precision: str,
    out_path: Path,
    attention: str = "plain",
) -> dict:
    """Export with the dynamo exporter; the sample has 2 tiles because a 1-tile sample silently fixes the axis."""
    if attention not in ("plain", "fused"):
        raise ValueError(f"attention {attention!r} is not 'plain' or 'fused'")
    dtype = TORCH_DTYPES[precision]
    out_dtype = torch.float16 if attention == "fused" and precision == "fp16" else torch.float32
    device = next(model.parameters()).device
    wrapper = VisionWrapper(vision_copy(model, precision, attention), dtype, out_dtype).eval()
    sample = torch.from_numpy(sample_pixels(2, tile_size)).to(device)
    tiles = torch.export.Dim("tiles", min=1, max=max(2, max_tiles_total))
    table = _translation_table() if attention == "fused" else None
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (sample,),
            str(out_path),
            dynamo=True,
            opset_version=OPSET,
            input_names=[VISION_INPUT],
            output_names=[VISION_OUTPUT],
            dynamic_shapes=({0: tiles},),
            external_data=True,
            verbose=False,
            custom_translation_table=table,
        )
    import onnx

    # check_model on the path so that external data (written by default) is found.
    onnx.checker.check_model(str(out_path))
    proto = onnx.load(str(out_path), load_external_data=False)
    fused = sum(node.op_type == "MultiHeadAttention" for node in proto.graph.node)
    return {
        "inputs": {VISION_INPUT: ["tiles", 3, tile_size, tile_size]},
        "outputs": {VISION_OUTPUT: ["tiles", None, None]},
        "opset": OPSET,
        "attention": attention,
        "fused_attention_nodes": fused,
        "output_dtype": str(out_dtype).removeprefix("torch."),
    }


def compare_vision(
    model: torch.nn.Module, onnx_path: Path, tile_size: int, tile_counts: list[int], providers: list[str]
) -> dict:
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
    return {
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_by_tiles": diffs,
        "max_abs_value": scale,
        "output_shapes": shapes,
        "provider": providers[0],
    }
