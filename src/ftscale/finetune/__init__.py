"""Finetuning methods (full-model, LoRA, prompt, any PEFT method), training and evaluation."""
