"""utter-tts: fast, dependable serving of Qwen3-TTS in our own lean PyTorch."""

__version__ = "0.1.0"
