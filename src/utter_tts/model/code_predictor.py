"""The code predictor: a small Qwen3 decoder that, given the talker's hidden state and codebook 0 of a
frame, predicts codebooks 1..15 one after another (15 short steps over a 16-column cache)."""

from __future__ import annotations

import torch
from torch import nn

from utter_tts.model.config import CodePredictorConfig
from utter_tts.model.layers import Decoder, KVCache, Rotary


class CodePredictorModel(Decoder):
    def __init__(self, cfg: CodePredictorConfig, embedding_dim: int):
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
        # embeddings of codebooks 1..15 are talker-width: they are summed into the talker's input
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, embedding_dim) for _ in range(cfg.num_code_groups - 1)
        )


class CodePredictor(nn.Module):
    """Predicts codebooks 1..15 of a frame from the talker's hidden state and codebook 0."""

    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int):
        super().__init__()
        self.cfg = cfg
        self.model = CodePredictorModel(cfg, talker_hidden)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        if cfg.hidden_size != talker_hidden:
            self.small_to_mtp_projection = nn.Linear(talker_hidden, cfg.hidden_size, bias=True)
        else:
            self.small_to_mtp_projection = nn.Identity()
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    @property
    def num_steps(self) -> int:
        return self.cfg.num_code_groups - 1

    def new_caches(self, batch: int, dtype=None, device=None) -> list[KVCache]:
        # stacked: the fused engine's one-launch predictor pass reaches every layer's cache at one stride
        return self.model.new_caches(batch, self.cfg.num_code_groups, dtype, device, stacked=True)

    def step_tables(self, batch: int, device, dtype) -> tuple[torch.Tensor, ...]:
        """Columns, RoPE tables and masks of every position of the predictor's short cache, built once
        per frame and sliced by each of its 15 steps (instead of rebuilt at every step)."""
        n = self.cfg.num_code_groups
        cols = torch.arange(n, device=device).expand(batch, n)
        start = torch.zeros(batch, dtype=torch.long, device=device)
        return (cols, *self.model.tables(cols, cols, start, n, self.rotary, dtype))

    def step(self, x: torch.Tensor, col: int, caches: list[KVCache], tables=None) -> torch.Tensor:
        """Run embeddings x [B, T, talker_hidden] at columns col..col+T-1; return the last hidden [B, D]."""
        B, T, _ = x.shape
        x = self.small_to_mtp_projection(x)
        if tables is None:
            tables = self.step_tables(B, x.device, x.dtype)
        cols, cos, sin, mask = tables
        end = col + T
        h = self.model.run_with(
            x, cols[:, col:end], cos[:, :, col:end], sin[:, :, col:end], mask[:, :, col:end], caches
        )
        return h[:, -1]

    def embed(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """Embedding of codebook `codebook` (1..15) codes [B] -> [B, talker_hidden]."""
        return self.model.codec_embedding[codebook - 1](codes)
