"""The decoder for GPUs: ONNX Runtime's fused contrib ops and a static KV cache that is updated in place.

Built node by node from the torch weights (no tracing, so a full-size build takes seconds, not minutes),
for ``--precision fp16`` and ``bf16``. Per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm),
one packed q/k/v MatMul, GroupQueryAttention (RoPE, the in-place cache write and flash attention in one
op), the output MatMul, SkipSimplifiedLayerNormalization, one packed gate/up MatMul, QuickGelu(alpha 1)
= SiLU, Mul, the down MatMul: about a dozen kernels a layer instead of the ~60 of a traced Llama layer.

Inputs
  inputs_embeds          float32 [batch, seq, hidden] (cast to the graph precision inside)
  seqlens_k              int32   [batch]   tokens in the row's cache after this call, minus 1
  total_sequence_length  int32   []        seq for a prompt; for a decode step any bound >= every
                                           seqlens_k + 1 up to the cache capacity (CUDA graphs: the capacity)
  logits_index           int64   [batch, 1] which position of ``seq`` gives the logits (the row's last token)
  past_key_values.{i}.key/value  [batch, kv_heads, capacity, head_dim] in the graph precision
Outputs
  logits                 float32 [batch, vocab]
  top_ids                int64   [batch, 2]  the two best tokens (greedy decoding reads only these)
  present.{i}.key/value  same buffers as the pasts: bind the same OrtValue to both and GroupQueryAttention
                         writes the new keys/values in place (``past_present_share_buffer``)

Rows are RIGHT-padded (GroupQueryAttention's convention): row b's tokens sit at cache slots
0..seqlens_k[b]. Positions are therefore 0..len-1 per row, which is exactly what upstream's left-padded
position ids (cumsum(mask) - 1) give the real tokens, so the logits are the same function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.decoder import text_geometry

OPSET = 20
IR_VERSION = 10
PRECISIONS = ("fp32", "fp16", "bf16")  # fp32 runs on ONNX Runtime's CPU provider only (tests, reference)
INPUTS = ("inputs_embeds", "seqlens_k", "total_sequence_length", "logits_index")
OUTPUTS = ("logits", "top_ids")


def _onnx_types() -> dict:
    from onnx import TensorProto

    return {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def raw_bytes(value: torch.Tensor, precision: str) -> bytes:
    """``value`` in ``precision`` as little-endian bytes (converted on its own device; bf16 through an int16 view,
    since numpy has no bfloat16)."""
    value = value.detach()
    if precision == "bf16":
        return value.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy().tobytes()
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    return value.to(dtype).contiguous().cpu().numpy().tobytes()


def rope_tables(model: torch.nn.Module, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [positions, head_dim/2] as transformers' Llama rotary embedding computes them (fp32).

    Dynamic NTK RoPE equals plain RoPE up to max_position_embeddings, the table's length, so the
    original inverse frequencies are the right ones for every position the graph can see."""
    rotary = model.model.language_model.rotary_emb
    inv_freq = getattr(rotary, "original_inv_freq", rotary.inv_freq).detach().float().cpu()
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    return freqs.cos() * scaling, freqs.sin() * scaling


class _Graph:
    """Nodes and initializers collected while building. Weights go straight into the external data file as they
    are converted, so the peak memory is the model plus one matrix (not the model plus a copy of the graph)."""

    ALIGN = 4096  # offsets on page boundaries, so ONNX Runtime can memory-map the weights

    def __init__(self, precision: str, data_path: Path) -> None:
        self.precision = precision
        self.nodes: list = []
        self.initializers: list = []
        self.data_name = data_path.name
        self.data = open(data_path, "wb")
        self.offset = 0

    def weight(self, name: str, value: torch.Tensor, precision: str | None = None) -> str:
        from onnx import TensorProto

        precision = precision or self.precision
        raw = raw_bytes(value, precision)
        pad = -self.offset % self.ALIGN
        self.data.write(b"\0" * pad)
        self.offset += pad
        self.data.write(raw)
        proto = TensorProto(name=name, data_type=_onnx_types()[precision], dims=list(value.shape))
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", self.offset), ("length", len(raw))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, str(value)
        self.offset += len(raw)
        self.initializers.append(proto)
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs


def _add_layers(g: _Graph, model: torch.nn.Module, positions: int) -> None:
    """Every node and weight: embeddings in, logits and the top-2 token ids out."""
    from onnx import TensorProto

    cfg = model.config.text_config
    lm = model.model.language_model
    geo = text_geometry(model)
    eps = float(cfg.rms_norm_eps)
    ms = "com.microsoft"
    cos, sin = rope_tables(model, positions)
    g.weight("rope.cos", cos)
    g.weight("rope.sin", sin)
    x = "inputs_embeds"
    if g.precision != "fp32":
        x = g.node("Cast", ["inputs_embeds"], ["embeds_cast"], "cast_in", to=_onnx_types()[g.precision])[0]
    layers = list(lm.layers)
    hidden = g.node(
        "SimplifiedLayerNormalization",
        [x, g.weight("layers.0.input_norm", layers[0].input_layernorm.weight)],
        ["l0.norm_in"],
        "l0.norm_in",
        axis=-1,
        epsilon=eps,
        stash_type=1,
    )[0]
    residual = x
    for i, layer in enumerate(layers):
        att, mlp = layer.self_attn, layer.mlp
        if any(getattr(lin, "bias", None) is not None for lin in (att.q_proj, att.k_proj, att.v_proj, att.o_proj)):
            raise ValueError("the fused decoder has no attention biases (InternLM2/Llama have none)")
        qkv_w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).T
        qkv = g.node("MatMul", [hidden, g.weight(f"layers.{i}.qkv.weight", qkv_w)], [f"l{i}.qkv"], f"l{i}.qkv")[0]
        attn = g.node(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                "seqlens_k",
                "total_sequence_length",
                "rope.cos",
                "rope.sin",
            ],
            [f"l{i}.attn", f"present.{i}.key", f"present.{i}.value"],
            f"l{i}.gqa",
            domain=ms,
            num_heads=geo["heads"],
            kv_num_heads=geo["kv_heads"],
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(att.scaling),
        )[0]
        o = g.node("MatMul", [attn, g.weight(f"layers.{i}.o.weight", att.o_proj.weight.T)], [f"l{i}.o"], f"l{i}.o")[0]
        normed, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization",
            [o, residual, g.weight(f"layers.{i}.post_norm", layer.post_attention_layernorm.weight)],
            [f"l{i}.norm_post", "", "", f"l{i}.resid_attn"],
            f"l{i}.norm_post",
            domain=ms,
            epsilon=eps,
        )
        gate_up_w = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).T
        gate_up = g.node(
            "MatMul", [normed, g.weight(f"layers.{i}.gate_up.weight", gate_up_w)], [f"l{i}.gate_up"], f"l{i}.gate_up"
        )[0]
        gate, up = g.node("Split", [gate_up], [f"l{i}.gate", f"l{i}.up"], f"l{i}.split", axis=-1, num_outputs=2)
        silu = g.node("QuickGelu", [gate], [f"l{i}.silu"], f"l{i}.silu", domain=ms, alpha=1.0)[0]
        act = g.node("Mul", [silu, up], [f"l{i}.act"], f"l{i}.act")[0]
        down = g.node(
            "MatMul", [act, g.weight(f"layers.{i}.down.weight", mlp.down_proj.weight.T)], [f"l{i}.down"], f"l{i}.down"
        )[0]
        last = i == len(layers) - 1
        norm_w = lm.norm.weight if last else layers[i + 1].input_layernorm.weight
        norm_name = "final_norm" if last else f"layers.{i + 1}.input_norm"
        hidden, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization",
            [down, residual, g.weight(norm_name, norm_w)],
            [f"l{i}.out", "", "", f"l{i}.resid_mlp"],
            f"l{i}.norm_out",
            domain=ms,
            epsilon=eps,
        )
    picked = g.node("GatherND", [hidden, "logits_index"], ["last_hidden"], "pick_last", batch_dims=1)[0]
    head = "logits" if g.precision == "fp32" else "logits_t"
    g.node("MatMul", [picked, g.weight("lm_head.weight", model.lm_head.weight.T)], [head], "lm_head")
    if g.precision != "fp32":
        g.node("Cast", [head], ["logits"], "cast_logits", to=TensorProto.FLOAT)
    g.node(
        "TopK",
        ["logits", g.constant("top_k", np.array([2], np.int64))],
        ["top_values", "top_ids"],
        "top2",
        axis=-1,
        largest=1,
        sorted=1,
    )


def build_fused_decoder(
    model: torch.nn.Module, out_path: Path, precision: str, max_positions: int | None = None
) -> dict:
    """Write the decoder ONNX (weights in ``<out_path>.data``); returns what the manifest records."""
    import onnx
    from onnx import TensorProto, helper

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    geo = text_geometry(model)
    positions = int(max_positions or model.config.text_config.max_position_embeddings)
    out_path = Path(out_path)
    g = _Graph(precision, out_path.with_name(out_path.name + ".data"))
    try:
        with torch.no_grad():
            _add_layers(g, model, positions)
    finally:
        g.data.close()
    elem = _onnx_types()[precision]
    kv_shape = ["batch", geo["kv_heads"], "capacity", geo["head_dim"]]
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", geo["hidden"]]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["batch", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", geo["vocab"]]),
        helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["batch", 2]),
    ]
    for i in range(geo["layers"]):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", elem, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", elem, kv_shape))
    graph = helper.make_graph(g.nodes, "ivl_fused_decoder", inputs, outputs, g.initializers)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="ivl_ros export/fused_decoder.py",
    )
    proto.ir_version = IR_VERSION
    onnx.save_model(proto, str(out_path))  # the weights are already in the .data file
    ops: dict[str, int] = {}
    for n in g.nodes:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {
        "graph": "fused",
        "precision": precision,
        "opset": OPSET,
        "geometry": geo,
        "max_positions": positions,
        "kv_cache": "static, shared past/present buffers (in place)",
        "padding": "right",
        "inputs": {i.name: _dims(i) for i in inputs[:4]},
        "outputs": {o.name: _dims(o) for o in outputs[:2]},
        "op_counts": ops,
        "nodes": len(g.nodes),
    }


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def compare_fused_decoder(
    model: torch.nn.Module, onnx_path: Path, providers: list[str], precision: str, device: str = "cpu", steps: int = 4
) -> dict:
    """ORT vs the torch model on a right-padded batch: the prompt, then ``steps`` decode steps fed the torch
    model's greedy tokens on both sides. Logit max abs diff and top-1 agreement (torch in its own dtype)."""
    if precision == "bf16" and providers[0] == "CPUExecutionProvider":
        return {
            "logits_max_abs_diff": None,
            "reason": "ONNX Runtime's CPU provider has no bfloat16 MatMul; checked on CUDA (--device cuda)",
        }
    from transformers import DynamicCache

    from ivl_ros.model.backends.ort_fused import FusedDecoder, cache_capacity
    from ivl_ros.model.compat import cache_kwargs, output_cache

    lm = model.model.language_model
    table = lm.embed_tokens.weight.detach().float().cpu().numpy()
    torch_device = next(model.parameters()).device
    lengths = np.array([7, 12, 3])
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, table.shape[0], n) for n in lengths]
    decoder = FusedDecoder(onnx_path, providers, device, cuda_graphs=False)
    state = decoder.allocate(len(rows), cache_capacity(int(lengths.max()) + steps, decoder.max_positions))
    prompt = np.zeros((len(rows), int(lengths.max()), table.shape[1]), np.float32)
    for b, ids in enumerate(rows):
        prompt[b, : len(ids)] = table[ids]
    decoder.prefill(state, prompt, lengths)
    diff, scale, agree, total = 0.0, 0.0, 0, 0
    caches = [DynamicCache(config=model.config.text_config) for _ in rows]
    feed = [ids for ids in rows]
    for step in range(steps + 1):
        ref = []
        with torch.no_grad():
            for b, ids in enumerate(feed):
                x = torch.from_numpy(table[ids][None]).to(torch_device, next(model.parameters()).dtype)
                out = lm(inputs_embeds=x, use_cache=True, **cache_kwargs(lm, caches[b]))
                caches[b] = output_cache(out)
                ref.append(model.lm_head(out.last_hidden_state[:, -1]).float().cpu().numpy()[0])
        ref = np.stack(ref)
        got = state.logits.numpy()
        diff = max(diff, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
        total += len(rows)
        if step < steps:
            nxt = ref.argmax(-1)
            feed = [np.array([t]) for t in nxt]
            decoder.step(state, table[nxt][:, None, :])
    return {
        "logits_max_abs_diff": diff,
        "max_abs_logit": scale,
        "top1_agreement": agree / total,
        "positions_compared": total,
        "rows": lengths.tolist(),
        "decode_steps": steps,
        "provider": providers[0],
    }
