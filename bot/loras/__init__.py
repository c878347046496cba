"""LoRA adapters: what a file is, the registry of installed ones, and the tags that pick them."""
