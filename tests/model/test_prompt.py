"""Prompt building's shared pieces: template and control tokens embedded once per talker, exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utter_tts.api import TTS
from utter_tts.device import to_device
from utter_tts.model.prompt import VoiceSpec, make_prompt, plan_prompt
from utter_tts.request import Request


@pytest.fixture(scope="module")
def tts(checkpoints):
    return TTS.from_pretrained(checkpoints("base", "tiny-1.7b"), device="cpu", dtype="float32")


def test_constant_embeds_equal_the_plain_calls_and_are_made_once(tts):
    talker = tts.pipeline.talker
    ids = (5, 17, 3)
    text = talker.constant_embed("text", ids)
    assert torch.equal(text, talker.text_embed(torch.tensor(ids)))
    codec = talker.constant_embed("codec", ids)
    assert torch.equal(codec, talker.codec_embed(torch.tensor(ids)))
    assert talker.constant_embed("text", ids) is text  # cached, not recomputed
    assert not torch.equal(text[:, : codec.shape[1]], codec)  # the kinds do not share entries


def test_constant_embeds_follow_new_weights(tts, checkpoints):
    # a private copy: the module-scoped pipeline stays intact for the other tests
    tts = TTS.from_pretrained(checkpoints("base", "tiny-1.7b"), device="cpu", dtype="float32")
    talker = tts.pipeline.talker
    ids = (2, 9)
    before_text = talker.constant_embed("text", ids).clone()
    before_codec = talker.constant_embed("codec", ids).clone()
    changes = [  # each weight the embeddings read, changed alone
        talker.model.text_embedding.weight,
        talker.text_projection.linear_fc1.weight,
        talker.text_projection.linear_fc1.bias,
        talker.text_projection.linear_fc2.weight,
        talker.text_projection.linear_fc2.bias,
    ]
    for weight in changes:
        with torch.no_grad():
            weight.add_(0.5)
        now = talker.constant_embed("text", ids)
        assert torch.equal(now, talker.text_embed(torch.tensor(ids)))
        assert not torch.equal(now, before_text)
        before_text = now.clone()
    with torch.no_grad():
        talker.model.codec_embedding.weight.mul_(3.0)
    assert torch.equal(talker.constant_embed("codec", ids), 3.0 * before_codec)


def test_prompts_built_again_are_identical_and_leave_the_cache_intact(tts):
    voice = tts.create_voice((torch.randn(24000).numpy() * 0.1, 24000))
    talker = tts.pipeline.talker
    requests = [
        Request("Hello there.", "clone", "english", voice=voice, seed=1),
        Request("Another line, longer than the first one.", "clone", "auto", voice=voice, seed=2),
        Request("In the prompt.", "clone", "english", voice=voice, seed=3, non_streaming_mode=True),
    ]
    first = [tts.pipeline.prepare(r).prompt for r in requests]
    cached = {k: v.clone() for k, v in talker._constants.items()}
    assert cached, "prompt building used no shared pieces"
    again = [tts.pipeline.prepare(r).prompt for r in requests]
    for a, b in zip(first, again):
        assert torch.equal(a.embeds, b.embeds) and torch.equal(a.trailing, b.trailing)
    for key, value in talker._constants.items():  # nothing wrote into a shared piece
        if key in cached:
            assert torch.equal(value, cached[key])


def test_to_device_keeps_values_and_dtype():
    out = to_device([[1, 2], [3, 4]], torch.long, torch.device("cpu"))
    assert out.dtype == torch.long and out.tolist() == [[1, 2], [3, 4]]
    host = torch.tensor([0.5, 1.5])
    moved = to_device(host, torch.float32, torch.device("cpu"))
    moved.add_(1)
    assert host.tolist() == [0.5, 1.5]  # a copy, never the caller's tensor


def test_template_pieces_are_encoded_once_and_the_same(tts):
    tok = tts.pipeline.tokenizer
    for text in ("Hello there.", "Zweite Zeile, etwas länger.", "\n"):
        expected = [
            tok.im_start_id,
            *tok.encode_plain(f"assistant\n{text}"),
            tok.im_end_id,
            *tok.encode_plain("\n"),
            tok.im_start_id,
            *tok.encode_plain("assistant\n"),
        ]
        assert tok.assistant_text(text) == expected
    assert set(tok._pieces) == {"\n", "assistant\n"}


@settings(max_examples=40, deadline=None)
@given(
    text=st.integers(1, 30),
    ref_text=st.integers(0, 12),
    ref_frames=st.integers(0, 40),
    in_prompt=st.booleans(),
    language=st.sampled_from(["auto", "english"]),
    instruct=st.integers(0, 5),
    xvector=st.booleans(),
)
def test_the_plan_counts_the_rows_the_prompt_has(
    tts, text, ref_text, ref_frames, in_prompt, language, instruct, xvector
):
    """`plan_prompt` counts, without a tensor op, the rows `make_prompt` makes, in every layout (the
    engine checks a request against its static shapes with these counts at submit time)."""
    cfg, talker = tts.pipeline.config, tts.pipeline.talker
    H = cfg.talker.hidden_size
    voice = VoiceSpec(
        speaker_embedding=torch.randn(H) if xvector else None,
        ref_codes=torch.randint(0, 100, (ref_frames, 16)) if ref_frames else None,
        ref_text_ids=list(range(7, 7 + ref_text)) or None,
        instruct_ids=list(range(20, 20 + instruct)) or None,
    )
    text_ids = [1, 2, 3, *range(30, 30 + text), 4, 5, 6, 7, 8]
    plan = plan_prompt(cfg, text_ids, language, voice, in_prompt)
    prompt = make_prompt(talker, cfg, plan)
    assert (plan.rows, plan.text_rows) == (prompt.embeds.shape[0], prompt.trailing.shape[0])
    assert plan.voice.icl == (ref_frames > 0 and ref_text > 0)
    assert (plan.ref_codes is None) == (not plan.voice.icl)


def test_a_job_makes_its_prompt_once_at_first_use(tts):
    voice = tts.create_voice((torch.randn(24000).numpy() * 0.1, 24000))
    made = []
    job = tts.pipeline.prepare(Request("Hello there.", "clone", "english", voice=voice, seed=1))
    make = job.make
    job.make = lambda plan: made.append(plan) or make(plan)
    assert job._prompt is None  # prepared: checked and counted, no embedding made yet
    first = job.prompt
    assert job.prompt is first and made == [job.plan]
    assert first.embeds.shape[0] == job.plan.rows


@pytest.mark.parametrize("extra", [-2, -1, 0, 1, 2])  # text rows around the reference's code rows
@pytest.mark.parametrize("in_prompt", [False, True])
def test_the_plan_counts_icl_rows_at_the_text_and_codes_boundary(tts, extra, in_prompt):
    cfg, talker = tts.pipeline.config, tts.pipeline.talker
    ref_text, body = 4, 6
    text_rows = ref_text + body + 1
    voice = VoiceSpec(
        speaker_embedding=torch.randn(cfg.talker.hidden_size),
        ref_codes=torch.randint(0, 100, (text_rows - 1 - extra, 16)),  # 1 + frames code rows
        ref_text_ids=list(range(7, 7 + ref_text)),
    )
    plan = plan_prompt(cfg, [1, 2, 3, *range(30, 30 + body), 4, 5, 6, 7, 8], "english", voice, in_prompt)
    prompt = make_prompt(talker, cfg, plan)
    assert (plan.rows, plan.text_rows) == (prompt.embeds.shape[0], prompt.trailing.shape[0])
