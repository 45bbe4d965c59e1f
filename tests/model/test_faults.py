"""The parity checks can fail: deliberate faults in our model each break them."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.official import install_oracle_stubs
from utter_tts.api import TTS
from utter_tts.model import prompt as prompt_mod
from utter_tts.model.frame import SamplingParams, Trace, pick_codebook0, suppressed_ids
from utter_tts.model.layers import Rotary
from utter_tts.request import Request

from .test_parity import GREEDY, N_TOKENS, TEXTS, Oracle, reference_clip

TEXT = TEXTS["english"]


def official_clone(path):
    """One official greedy clone (x-vector, repetition penalty 1.3 so that it shapes the codes), and our
    model with the same voice: (tts, voice, official codes, official talker logits)."""
    ref = reference_clip()
    _, codes, tl, _ = Oracle(path).run(
        "generate_voice_clone",
        text=TEXT,
        language="English",
        ref_audio=(ref, 24000),
        x_vector_only_mode=True,
        repetition_penalty=1.3,
    )
    tts = TTS.from_pretrained(path, device="cpu", dtype="float32")
    return tts, tts.create_voice((ref, 24000)), codes[0], tl


@pytest.fixture(scope="module")
def case(checkpoints):
    return official_clone(checkpoints("base", "tiny-1.7b"))


def ours(tts, voice, **sampling):
    trace = Trace()
    req = Request(
        TEXT, "clone", "english", voice=voice, sampling={**GREEDY, "repetition_penalty": 1.3, **sampling}
    )
    return tts.generate_codes([req], trace=trace)[0], trace


def test_unfaulted_matches(case):
    tts, voice, expected, _ = case
    codes, _ = ours(tts, voice)
    assert codes.shape == (N_TOKENS - 1, 16)
    assert torch.equal(codes, expected)


@pytest.fixture(scope="module")
def repetitive(checkpoints, tmp_path_factory):
    """A checkpoint whose codec head favours a few codes, so greedy decoding wants to repeat them and
    the repetition penalty decides which one comes next."""
    src = checkpoints("base", "tiny-1.7b")
    dst = tmp_path_factory.mktemp("repetitive") / "ckpt"
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    state["talker.codec_head.weight"][:6] *= 4.0
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return official_clone(dst)[:3]


def test_repetition_penalty_dropped_fails(repetitive):
    tts, voice, expected = repetitive
    assert len(set(expected[:, 0].tolist())) < 25  # codebook 0 does repeat itself
    codes, _ = ours(tts, voice)
    assert torch.equal(codes, expected)
    codes, _ = ours(tts, voice, repetition_penalty=1.0)
    assert not torch.equal(codes, expected)


def test_codebook0_rules_match_hf_processors():
    """Repetition penalty, suppressed control ids and min_new_tokens, against transformers' own
    logits processors (which the official generate runs); without the penalty the choice changes."""
    install_oracle_stubs()
    from transformers import (
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
    )

    from utter_tts.model.config import SamplingConfig

    torch.manual_seed(0)
    vocab, eos = 3072, 2150
    suppress = suppressed_ids(vocab, eos)
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[suppress] = True
    history = torch.randint(0, 2048, (3, 5))  # with repeats: HF penalises a token said twice once
    logits = torch.randn(3, vocab)
    rows = torch.arange(3)
    logits[rows, history[:, 0]] = 10.0  # the favourite was already said ...
    logits[rows, 2047] = 9.0  # ... so the penalty (10 / 1.3 < 9) hands the frame to another code
    for step, min_new in ((5, 2), (1, 2)):
        expected = logits.clone()
        for proc in (
            RepetitionPenaltyLogitsProcessor(1.3),
            SuppressTokensLogitsProcessor(suppress),
            MinNewTokensLengthLogitsProcessor(0, min_new, eos),
        ):
            expected = proc(history[:, :step], expected)
        params = SamplingParams.stack(
            [SamplingConfig(do_sample=False, repetition_penalty=1.3)] * 3, [0, 1, 2], "cpu"
        )
        got = pick_codebook0(logits.clone(), seen_mask(history[:, :step], vocab), step, params, mask, eos)
        assert torch.equal(got, expected.argmax(-1))
    assert torch.equal(got, torch.full((3,), 2047))
    no_penalty = SamplingParams.stack(
        [SamplingConfig(do_sample=False, repetition_penalty=1.0)] * 3, [0] * 3, "cpu"
    )
    faulty = pick_codebook0(logits.clone(), seen_mask(history, vocab), 5, no_penalty, mask, eos)
    assert not torch.equal(faulty, got)


def seen_mask(history: torch.Tensor, vocab: int) -> torch.Tensor:
    """The frame step's form of a token history: which tokens each row has said."""
    return torch.zeros(history.shape[0], vocab, dtype=torch.bool).scatter_(1, history, True)


def test_decode_position_off_by_one_fails(case, monkeypatch):
    """Decode steps one position ahead of the prompt (a uniform shift would be invisible to RoPE)."""
    tts, voice, expected, _ = case
    forward = Rotary.forward
    monkeypatch.setattr(
        Rotary, "forward", lambda self, pos, dtype: forward(self, pos + (pos.shape[-1] == 1), dtype)
    )
    codes, _ = ours(tts, voice)
    assert not torch.equal(codes, expected)


def test_text_codec_alignment_off_by_one_fails(case, monkeypatch):
    tts, voice, expected, _ = case
    build = prompt_mod.make_prompts

    def shifted(*a, **kw):
        made = build(*a, **kw)
        for p in made:
            p.trailing = p.trailing[1:]  # each text token arrives one frame early
        return made

    monkeypatch.setattr("utter_tts.pipeline.make_prompts", shifted)
    codes, _ = ours(tts, voice)
    assert not torch.equal(codes, expected)


@pytest.mark.parametrize("field", ["tts_pad_token_id", "codec_bos_id", "codec_think_id"])
def test_wrong_special_id_fails(case, field):
    tts, voice, expected, _ = case
    cfg = tts.pipeline.config.talker if field.startswith("codec") else tts.pipeline.config
    old = getattr(cfg, field)
    setattr(cfg, field, old + 1)
    try:
        codes, _ = ours(tts, voice)
    finally:
        setattr(cfg, field, old)
    assert not torch.equal(codes, expected)


def test_logits_check_sees_small_faults(case, monkeypatch):
    """A fault too small to flip an argmax still fails the per-step logit comparison."""
    tts, voice, _, official_logits = case
    w = tts.pipeline.talker.model.layers[0].mlp.down_proj.weight
    monkeypatch.setattr(
        tts.pipeline.talker.model.layers[0].mlp.down_proj, "weight", torch.nn.Parameter(w * 1.001)
    )
    _, trace = ours(tts, voice)
    worst = max((a - b).abs().max().item() for a, b in zip(trace.talker_logits, official_logits))
    assert worst > 2e-4  # the parity tolerance


# ---- M-RoPE ----------------------------------------------------------------------------------------


def _official_mrope(q, cos, sin, sections):
    install_oracle_stubs()
    from qwen_tts.core.models.modeling_qwen3_tts import apply_multimodal_rotary_pos_emb

    out, _ = apply_multimodal_rotary_pos_emb(q, q, cos, sin, sections, mrope_interleaved=True)
    return out


def _official_cos_sin(positions, head_dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = positions.float()[..., None] * inv  # [3, B, T, half]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _ours_mrope(q, positions, head_dim, theta, sections):
    rot = Rotary(head_dim, theta, sections, interleaved=True)
    cos, sin = rot(positions, q.dtype)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = head_dim // 2
    rotated = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
    return q * cos + rotated * sin


def test_mrope_matches_official_with_distinct_axes():
    """With different time/height/width positions the section layout matters: ours equals the official
    interleaved M-RoPE, and shifted sections do not."""
    torch.manual_seed(0)
    head_dim, theta, sections = 16, 1e4, [4, 2, 2]
    q = torch.randn(2, 4, 5, head_dim)
    positions = torch.stack([torch.arange(5), torch.arange(5) * 37 + 5, torch.arange(5) * 101 + 3])
    positions = positions[:, None].expand(3, 2, 5)
    cos, sin = _official_cos_sin(positions, head_dim, theta)
    expected = _official_mrope(q, cos, sin, sections)
    torch.testing.assert_close(_ours_mrope(q, positions, head_dim, theta, sections), expected)
    shifted = _ours_mrope(q, positions, head_dim, theta, [2, 4, 2])
    assert (shifted - expected).abs().max() > 1e-2


def test_mrope_sections_are_inert_when_axes_agree():
    """Qwen3-TTS feeds one position to all three axes, so any section layout gives plain RoPE; this is
    why an end-to-end parity test cannot see shifted sections (the unit test above does)."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 6, 16)
    positions = torch.arange(6)[None].expand(3, 1, 6)
    a = _ours_mrope(q, positions, 16, 1e6, [4, 2, 2])
    b = _ours_mrope(q, positions, 16, 1e6, [2, 4, 2])
    torch.testing.assert_close(a, b)
