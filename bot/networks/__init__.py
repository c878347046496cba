"""Extra networks, as A1111 calls them: LoRA adapters and textual-inversion embeddings — what a file is, their registries, and the prompt tags and words that pick them."""
