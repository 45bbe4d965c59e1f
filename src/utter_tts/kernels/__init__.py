"""Fused Triton decode kernels over packed tokens, each with its plain-PyTorch reference op beside it.

Importing this package imports triton (not a runtime dependency of the eager engine). CPU tensors run
through Triton's interpreter (tests, `bench/bench_kernels.py --smoke`); CUDA tensors run compiled.
See docs/kernels.md for the API, the numerics contract and the launch count per layer.
"""

from utter_tts.kernels.attention import (
    ATTENTION_CONFIG,
    AttentionConfig,
    decode_attention,
    decode_attention_ref,
    qk_norm_rope_write,
    qk_norm_rope_write_ref,
)
from utter_tts.kernels.linear import (
    CONFIGS,
    LinearConfig,
    QuantWeight,
    gate_up_silu,
    gate_up_silu_ref,
    linear,
    linear_ref,
    pack_gate_up,
    quantize_weight,
)
from utter_tts.kernels.packed_decoder import PackedDecoder
from utter_tts.kernels.sampler import Embed, noise, sample, sample_ref

__all__ = [
    "ATTENTION_CONFIG",
    "AttentionConfig",
    "CONFIGS",
    "Embed",
    "LinearConfig",
    "PackedDecoder",
    "QuantWeight",
    "decode_attention",
    "decode_attention_ref",
    "gate_up_silu",
    "gate_up_silu_ref",
    "linear",
    "linear_ref",
    "noise",
    "pack_gate_up",
    "qk_norm_rope_write",
    "qk_norm_rope_write_ref",
    "quantize_weight",
    "sample",
    "sample_ref",
]
