"""Parameter-efficient fine-tuning: LoRA / rsLoRA adapters and their PEFT-compatible files."""
