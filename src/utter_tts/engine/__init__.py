"""Fast inference: static KV caches, CUDA graphs, continuous batching and streaming."""
