"""The 12 Hz speech tokenizer (codec): Mimi encoder, causal decoder with typed streaming state."""
