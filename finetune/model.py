"""The model for training: the core's loader, freezing as upstream, peft LoRA, and the loss module.

LoRA targets (decision, see finetune/README section in the report): transformers' native InternVL has
split ``q_proj/k_proj/v_proj`` where upstream InternLM2 has one fused ``wqkv``. We put standard peft LoRA
on the split projections (q, k, v, o, gate, up, down = upstream's wqkv, wo, w1, w3, w2). Each of q, k, v
gets its own A matrix, so the adapter has more parameters than upstream's (138,412,032 vs 125,829,120 at
r=128 for InternVL2-2B) and is a different (slightly larger) function class; upstream adapters convert
exactly into this form, but not back. Parity would need a custom adapter with one A shared by q/k/v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune.preprocess import IGNORE_INDEX
from ivl_ros.model.checkpoint import LoadedModel, load_model

LLM_LORA_TARGETS = (r"model\.language_model\.layers\.\d+\."
                    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")
VIT_LORA_TARGETS = (r"model\.vision_tower\.encoder\.layer\.\d+\."
                    r"(attention\.(q_proj|k_proj|v_proj|projection_layer)|mlp\.(fc1|fc2))")
PROJECTOR = "multi_modal_projector"


def load_for_training(path: str, device: str, dtype: str, attention: str, gradient_checkpointing: bool
                      ) -> LoadedModel:
    loaded = load_model(path, device=device, dtype=dtype, attention=attention)
    vlm = loaded.model
    vlm.config.use_cache = False
    vlm.config.text_config.use_cache = False
    for p in vlm.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no enable_input_require_grads and works under DDP.
        kwargs = {"use_reentrant": False}
        if hasattr(vlm, "activation_checkpointing_enable"):  # newer transformers 5.x name
            vlm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return loaded


def apply_lora(vlm: nn.Module, r: int, alpha: int, dropout: float, vision_r: int = 0, unfreeze_mlp: bool = False):
    """Wrap with peft LoRA (upstream wrap_llm_lora / wrap_backbone_lora settings); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    targets = LLM_LORA_TARGETS if not vision_r else f"({LLM_LORA_TARGETS})|({VIT_LORA_TARGETS})"
    rank_pattern = {VIT_LORA_TARGETS: vision_r} if vision_r else {}
    alpha_pattern = {VIT_LORA_TARGETS: 2 * vision_r} if vision_r else {}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                        modules_to_save=[PROJECTOR] if unfreeze_mlp else None)
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
    """Shifted cross entropy over supervised tokens, mean per micro-batch (upstream's 4.37 Trainer).

    The LM head runs only on supervised positions: same loss, without a (batch, seq, 92553) logits tensor.
    """

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(self, input_ids, attention_mask, labels, pixel_values=None):
        out = self.vlm.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                             use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        if not bool(keep.any()):
            # Keeps every trainable parameter in the graph (DDP) while contributing nothing.
            return hidden.sum() * 0.0
        logits = self.vlm.lm_head(hidden[keep]).float()
        return F.cross_entropy(logits, target[keep])
