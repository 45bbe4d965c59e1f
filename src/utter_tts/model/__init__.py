"""The Qwen3-TTS network in lean PyTorch: config, talker, code predictor, speaker encoder, codec, loading."""
