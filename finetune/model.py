"""The model for training: the core's loader, freezing as upstream, peft LoRA, and the loss module.

Two batch layouts reach the loss module. *Padded* (the reference): right-padded rows with an attention mask,
through the model's own forward, as transformers runs it. *Packed* (the fast path): every sample of several
micro-batches end to end in one row, no padding; attention runs per sample (``segments``) through the same
attention kernel the model uses, the frozen vision tower runs without autograd, and the loss is a chunked
linear + cross entropy that never holds fp32 logits for more than ``LOSS_CHUNK`` positions. Both compute the
same loss; tests/finetune/test_packing.py checks that they do.

LoRA targets (decision, see finetune/README section in the report): transformers' native InternVL has
split ``q_proj/k_proj/v_proj`` where upstream InternLM2 has one fused ``wqkv``. We put standard peft LoRA
on the split projections (q, k, v, o, gate, up, down = upstream's wqkv, wo, w1, w3, w2). Each of q, k, v
gets its own A matrix, so the adapter has more parameters than upstream's (138,412,032 vs 125,829,120 at
r=128 for InternVL2-2B) and is a different (slightly larger) function class; upstream adapters convert
exactly into this form, but not back. Parity would need a custom adapter with one A shared by q/k/v.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from finetune.preprocess import IGNORE_INDEX
from ivl_ros.model.checkpoint import LoadedModel, load_model

LLM_LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)
VIT_LORA_TARGETS = (
    r"model\.vision_tower\.encoder\.layer\.\d+\."
    r"(attention\.(q_proj|k_proj|v_proj|projection_layer)|mlp\.(fc1|fc2))"
)
PROJECTOR = "multi_modal_projector"
LOSS_CHUNK = 2048  # positions per chunk of the packed loss: 2048 x 92553 fp32 logits = 0.76 GB at most
PACKED_PREFIX = "ivl_packed_"


def load_for_training(path: str, device: str, dtype: str, attention: str | None) -> LoadedModel:
    """The core's loader, every weight frozen, no KV cache (activation checkpointing: set_checkpointed_layers)."""
    loaded = load_model(path, device=device, dtype=dtype, attention=attention)
    vlm = loaded.model
    vlm.config.use_cache = False
    vlm.config.text_config.use_cache = False
    for p in vlm.parameters():
        p.requires_grad_(False)
    return loaded


def apply_lora(vlm: nn.Module, r: int, alpha: int, dropout: float, vision_r: int = 0, unfreeze_mlp: bool = False):
    """Wrap with peft LoRA (upstream wrap_llm_lora / wrap_backbone_lora settings); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    targets = LLM_LORA_TARGETS if not vision_r else f"({LLM_LORA_TARGETS})|({VIT_LORA_TARGETS})"
    rank_pattern = {VIT_LORA_TARGETS: vision_r} if vision_r else {}
    alpha_pattern = {VIT_LORA_TARGETS: 2 * vision_r} if vision_r else {}
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=[PROJECTOR] if unfreeze_mlp else None,
    )
    return get_peft_model(vlm, config)


def unfreeze_full(vlm: nn.Module, backbone: bool = False) -> None:
    """upstream full.sh: LLM (with embeddings and output) and MLP projector trained, ViT frozen unless
    ``backbone`` (upstream's freeze_backbone False)."""
    for name, p in vlm.named_parameters():
        if backbone or not name.startswith("model.vision_tower."):
            p.requires_grad_(True)


def trainable_to_float32(module: nn.Module) -> None:
    """Trainable weights stay fp32 (master weights) while the frozen base is bf16: updates of lr 4e-5 would
    mostly round away in bf16. Matmuls still run in bf16 under autocast."""
    for p in module.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


class CausalLoss(nn.Module):
    """Shifted cross entropy over supervised tokens, as upstream's 4.37 Trainer averaged it.

    Padded batches (``input_ids, attention_mask, labels``): the mean over the micro-batch's supervised tokens;
    the LM head runs only on supervised positions. Packed batches (``input_ids, position_ids, targets, weights,
    segments``): the weighted sum ``sum_t weights[t] * CE_t`` (batching.pack sets the weights so that a step's
    forwards add up to the padded layout's mean of micro-batch means).
    """

    def __init__(self, vlm: nn.Module, loss_chunk: int = LOSS_CHUNK) -> None:
        super().__init__()
        self.vlm = vlm
        self.loss_chunk = loss_chunk
        # Image features need autograd only when something in the vision path trains (--vision-lora-r,
        # --unfreeze-mlp, --full): otherwise the ViT and projector run under no_grad (nothing saved or recomputed).
        self.vision_trains = any(
            p.requires_grad
            for n, p in vlm.named_parameters()
            if n.startswith(("model.vision_tower.", f"model.{PROJECTOR}."))
        )

    def forward(
        self,
        input_ids,
        pixel_values=None,
        attention_mask=None,
        labels=None,
        position_ids=None,
        targets=None,
        weights=None,
        segments=None,
    ):
        if segments is None:
            return self._padded(input_ids, attention_mask, labels, pixel_values)
        return self._packed(input_ids, position_ids, targets, weights, segments, pixel_values)

    def _padded(self, input_ids, attention_mask, labels, pixel_values):
        out = self.vlm.model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, use_cache=False
        )
        hidden = out.last_hidden_state[:, :-1]
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        if not bool(keep.any()):
            # Keeps every trainable parameter in the graph (DDP) while contributing nothing.
            return hidden.sum() * 0.0
        logits = self.vlm.lm_head(hidden[keep]).float()
        return F.cross_entropy(logits, target[keep])

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grad = contextlib.nullcontext() if self.vision_trains else torch.no_grad()
        with grad, training_sdpa_backends():
            out = self.vlm.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def _packed(self, input_ids, position_ids, targets, weights, segments, pixel_values):
        model = self.vlm.model
        embeds = model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            features = self.image_features(pixel_values)
            features = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
            slots = input_ids == self.vlm.config.image_token_id
            if int(slots.sum()) != features.shape[0]:
                raise ValueError(f"packed batch: {int(slots.sum())} image tokens for {features.shape[0]} features")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), features)
        out = model.language_model(
            inputs_embeds=embeds, position_ids=position_ids, use_cache=False, ivl_segments=segments
        )
        hidden = out.last_hidden_state[0]
        keep = (weights != 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            return hidden.sum() * 0.0
        return linear_cross_entropy(
            hidden[keep], self.vlm.lm_head.weight, targets[keep], weights[keep], self.loss_chunk
        )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ W^T, target_i), with the gradients computed chunk by chunk in the forward.

    The logits of one chunk exist at a time (in the matmul dtype, then fp32 for the softmax, as the padded path's
    ``lm_head(...).float()`` + cross_entropy); only the gradients w.r.t. ``hidden`` (and ``W`` if it trains)
    are kept for the backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk):
        w = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            tgt = targets[start : start + chunk].unsqueeze(1)
            wt = weights[start : start + chunk].float().unsqueeze(1)
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += ((lse - logits.gather(1, tgt)) * wt).sum()
            grad = logits.sub_(lse).exp_()  # softmax, in place of the logits
            grad.scatter_add_(1, tgt, torch.full_like(wt, -1.0))
            grad = grad.mul_(wt).to(hidden.dtype)
            grad_hidden[start : start + chunk] = grad @ w
            if grad_weight is not None:
                grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gw = (grad_weight * grad_output).to(ctx.weight_dtype) if grad_weight is not None else None
        return grad_hidden * grad_output.to(grad_hidden.dtype), gw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, chunk: int = LOSS_CHUNK
) -> torch.Tensor:
    """Weighted sum of token cross entropies of ``hidden @ weight.T`` without materialising all logits."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, weights, chunk)


# ------------------------------------------------------------------------------------------------
# Packed attention: the model's own attention kernel, run once per sample of the packed row
# ------------------------------------------------------------------------------------------------
def training_sdpa_backends():
    """SDPA kernels for training: FlashAttention-2 (then memory-efficient, then math), never cuDNN's.

    On Hopper, torch 2.11 prefers cuDNN attention, which builds and compiles an execution plan for every new
    sequence length (and batch) it meets (pytorch PRs 155958, 161434); each packed sample, and each padded
    micro-batch, has its own length, so steps would spend much of their time building plans on the host (the
    padded layout's profiled step on the H200: GPU idle 59%). Flash and memory-efficient attention have no
    per-shape plans; flash takes ``enable_gqa`` natively. The trainer enters it around each forward and backward;
    the packed attention function and the image features enter it again, so an activation checkpoint's
    recompute uses the same kernels wherever it runs.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _base_attention(name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _segmented(base: str):
    inner = _base_attention(base)
    needs_mask = base != "sdpa"  # sdpa (and only it, of the kernels used here) is causal with no mask given

    def attention(module, query, key, value, attention_mask, ivl_segments=None, **kwargs):
        if ivl_segments is None:
            raise RuntimeError("packed attention without segments: the packed layout passes ivl_segments")
        lengths = [end - start for start, end in ivl_segments]
        if sum(lengths) != query.shape[2] or any(n < 1 for n in lengths):
            raise ValueError(f"segments {ivl_segments} do not tile the {query.shape[2]} packed positions")
        # split (not one slice per sample): its backward is a single concatenation of the gradients
        outs = []
        with training_sdpa_backends():
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), strict=True):
                mask = None
                if needs_mask:
                    n = q.shape[2]
                    mask = torch.full((n, n), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device).triu_(1)
                    mask = mask[None, None]
                outs.append(inner(module, q, k, v, mask, **kwargs)[0])
        return torch.cat(outs, dim=1), None

    return attention


@functools.cache
def _register_packed(base: str) -> str:
    from transformers import AttentionInterface

    name = PACKED_PREFIX + base
    AttentionInterface.register(name, _segmented(base))  # no mask function: packed rows need no mask tensor
    return name


def use_packed_attention(vlm: nn.Module, packed: bool) -> None:
    """Switch the LLM between its loaded attention implementation and the per-sample (packed) form of it."""
    config = vlm.model.language_model.config
    current = config._attn_implementation
    base = current.removeprefix(PACKED_PREFIX)
    config._attn_implementation = _register_packed(base) if packed else base


def set_checkpointed_layers(vlm: nn.Module, n_layers: int) -> None:
    """Activation checkpointing on the first ``n_layers`` LLM decoder layers only (non-reentrant: works under
    DDP, keeps the RNG so dropout masks are the same either way); the ViT too when it trains and any layer is."""
    fn = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    layers = list(vlm.model.language_model.layers)
    vision_trains = any(p.requires_grad for p in vlm.model.vision_tower.parameters())
    vision = list(vlm.model.vision_tower.encoder.layer) if vision_trains else []
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n_layers
        layer._gradient_checkpointing_func = fn
    for layer in vision:
        layer.gradient_checkpointing = n_layers > 0
        layer._gradient_checkpointing_func = fn


def lora_inputs_in_compute_dtype(vlm: nn.Module) -> None:
    """Under autocast, let peft feed LoRA the bf16 activations instead of an fp32 copy of each (peft casts the
    input to the fp32 master weights' dtype; autocast casts it straight back for the matmul, so the copies only
    cost memory traffic). Values are unchanged: bf16 -> fp32 -> bf16 is exact."""
    from peft.tuners.lora import LoraLayer

    for module in vlm.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False
