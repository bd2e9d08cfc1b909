"""LoRA / full finetuning of InternVL2 on InternVL-format data (entry points: lora.py, merge.py)."""
