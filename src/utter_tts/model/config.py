"""Dataclass configs parsed from the official checkpoint's config.json and generation_config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def pick_fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys the dataclass knows; official configs carry many HF bookkeeping keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


@dataclass
class CodePredictorConfig:
    vocab_size: int = 2048
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 5
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    num_code_groups: int = 32
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CodePredictorConfig:
        return cls(**pick_fields(cls, raw))


@dataclass
class TalkerConfig:
    code_predictor: CodePredictorConfig = field(default_factory=CodePredictorConfig)
    vocab_size: int = 3072
    hidden_size: int = 1024
    intermediate_size: int = 2048
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    num_code_groups: int = 32
    text_hidden_size: int = 2048
    text_vocab_size: int = 151936
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    codec_eos_token_id: int = 4198
    codec_think_id: int = 4202
    codec_nothink_id: int = 4203
    codec_think_bos_id: int = 4204
    codec_think_eos_id: int = 4205
    codec_pad_id: int = 4196
    codec_bos_id: int = 4197
    spk_id: dict[str, int] = field(default_factory=dict)
    spk_is_dialect: dict[str, Any] = field(default_factory=dict)
    codec_language_id: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def mrope_section(self) -> list[int]:
        return list((self.rope_scaling or {}).get("mrope_section", [self.head_dim // 2, 0, 0]))

    @property
    def mrope_interleaved(self) -> bool:
        return bool((self.rope_scaling or {}).get("interleaved", False))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TalkerConfig:
        kw = pick_fields(cls, raw)
        kw["code_predictor"] = CodePredictorConfig.from_dict(raw.get("code_predictor_config") or {})
        # the official config lower-cases nothing: speaker and language lookups are case-insensitive
        for key in ("spk_id", "spk_is_dialect", "codec_language_id"):
            kw[key] = {str(k).lower(): v for k, v in (raw.get(key) or {}).items()}
        return cls(**kw)


@dataclass
class SpeakerEncoderConfig:
    mel_dim: int = 128
    enc_dim: int = 1024
    enc_channels: list[int] = field(default_factory=lambda: [512, 512, 512, 512, 1536])
    enc_kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    enc_dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeakerEncoderConfig:
        return cls(**pick_fields(cls, raw))


@dataclass
class TTSConfig:
    """Top-level config.json of a Qwen3-TTS checkpoint (base, voice_design or custom_voice)."""

    talker: TalkerConfig
    speaker_encoder: SpeakerEncoderConfig
    tts_model_type: str = "base"
    tts_model_size: str = "1b7"
    tokenizer_type: str = "qwen3_tts_tokenizer_12hz"
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TTSConfig:
        kw = {k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(cls)}}
        kw["talker"] = TalkerConfig.from_dict(raw.get("talker_config") or {})
        kw["speaker_encoder"] = SpeakerEncoderConfig.from_dict(raw.get("speaker_encoder_config") or {})
        cfg = cls(**kw)
        if cfg.tts_model_type not in ("base", "voice_design", "custom_voice"):
            raise ValueError(f"unknown tts_model_type {cfg.tts_model_type!r} in config.json")
        if cfg.tokenizer_type != "qwen3_tts_tokenizer_12hz":
            raise ValueError(
                f"tokenizer_type {cfg.tokenizer_type!r} is not supported: utter-tts serves the 12 Hz models"
            )
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> TTSConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @property
    def languages(self) -> list[str]:
        """Languages this checkpoint knows (lower case), without dialect entries, plus 'auto'."""
        return ["auto"] + [k for k in self.talker.codec_language_id if "dialect" not in k]

    @property
    def speakers(self) -> list[str]:
        return sorted(self.talker.spk_id)


@dataclass
class SamplingConfig:
    """Generation settings: the official hard defaults, overridden by generation_config.json."""

    do_sample: bool = True
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    subtalker_temperature: float = 0.9
    max_new_tokens: int = 2048
    min_new_tokens: int = 2

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SamplingConfig:
        return cls(**pick_fields(cls, raw))

    @classmethod
    def from_file(cls, path: str | Path) -> SamplingConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def replace(self, **overrides: Any) -> SamplingConfig:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown sampling setting(s): {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def greedy(self) -> SamplingConfig:
        return dataclasses.replace(self, do_sample=False, subtalker_dosample=False)
