"""Model builders, quantisation and adapters (LoRA, QLoRA, full)."""
