"""Finetuning methods (full-model, LoRA, prompt tuning, any PEFT method), training and evaluation."""
