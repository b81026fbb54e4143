"""Model architectures defined by hubtrain (native Hugging Face `transformers` models)."""
