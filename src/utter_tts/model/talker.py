"""The talker: a Qwen3 decoder with M-RoPE over text and codec embeddings that predicts codebook 0 of
each frame; it owns the code predictor (codebooks 1..15) as the checkpoint does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utter_tts.model.code_predictor import CodePredictor
from utter_tts.model.config import TalkerConfig
from utter_tts.model.layers import Decoder, Rotary


class TalkerModel(Decoder):
    def __init__(self, cfg: TalkerConfig):
        super().__init__(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
            cfg.attention_bias,
        )
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)


class TextProjection(nn.Module):
    """Maps text embeddings (text_hidden_size) to the talker width: fc1 -> SiLU -> fc2, both biased."""

    def __init__(self, text_hidden: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def forward(self, x):
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.cfg = cfg
        self.model = TalkerModel(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor, cfg.hidden_size)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cfg.mrope_interleaved)

    def text_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.model.text_embedding(ids))

    def codec_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.codec_embedding(ids)

    def frame_embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the 16 codebook embeddings of frames codes [..., 16] -> [..., hidden]."""
        total = self.codec_embed(codes[..., 0])
        for i in range(1, codes.shape[-1]):
            total = total + self.code_predictor.embed(i, codes[..., i])
        return total

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.codec_head(hidden)
