"""Prompt building: the plan's counts, the rows a prompt is made of, a burst's prompts made in one pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from utter_tts.api import TTS
from utter_tts.device import to_device
from utter_tts.errors import InvalidInput
from utter_tts.model.prompt import VoiceSpec, make_prompt, make_prompts, plan_prompt
from utter_tts.pipeline import frame_budget
from utter_tts.request import Request


@pytest.fixture(scope="module")
def tts(checkpoints):
    return TTS.from_pretrained(checkpoints("base", "tiny-1.7b"), device="cpu", dtype="float32")


def _voice(H, xvector, ref_frames, ref_text, instruct):
    return VoiceSpec(
        speaker_embedding=torch.randn(H) if xvector else None,
        ref_codes=torch.randint(0, 100, (ref_frames, 16)) if ref_frames else None,
        ref_text_ids=list(range(7, 7 + ref_text)) or None,
        instruct_ids=list(range(20, 20 + instruct)) or None,
    )


layouts = st.fixed_dictionaries(
    dict(
        text=st.integers(1, 30),
        ref_text=st.integers(0, 12),
        ref_frames=st.integers(0, 40),
        in_prompt=st.booleans(),
        language=st.sampled_from(["auto", "english"]),
        instruct=st.integers(0, 5),
        xvector=st.booleans(),
    )
)


def _plan(cfg, text, ref_text, ref_frames, in_prompt, language, instruct, xvector):
    voice = _voice(cfg.talker.hidden_size, xvector, ref_frames, ref_text, instruct)
    text_ids = [1, 2, 3, *range(30, 30 + text), 4, 5, 6, 7, 8]
    return plan_prompt(cfg, text_ids, language, voice, in_prompt)


@settings(max_examples=25, deadline=None)
@given(st.lists(layouts, min_size=1, max_size=5))
def test_prompts_made_together_equal_prompts_made_alone(tts, cases):
    """A burst's prompts come from one batched pass: each equals the prompt made on its own (no row of one
    prompt leaks into another, whatever the mix of layouts)."""
    cfg, talker = tts.pipeline.config, tts.pipeline.talker
    plans = [_plan(cfg, **case) for case in cases]
    together = make_prompts(talker, cfg, plans)
    for plan, made in zip(plans, together):
        alone = make_prompt(talker, cfg, plan)
        assert made.embeds.shape == alone.embeds.shape and made.trailing.shape == alone.trailing.shape
        torch.testing.assert_close(made.embeds, alone.embeds, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(made.trailing, alone.trailing, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(made.pad_embed, alone.pad_embed, rtol=1e-5, atol=1e-6)


def test_a_prompt_is_its_text_embedding_plus_its_codec_part(tts):
    """The rows of an x-vector clone, checked against the pieces they are made of."""
    cfg, talker = tts.pipeline.config, tts.pipeline.talker
    t = cfg.talker
    voice = _voice(t.hidden_size, True, 0, 0, 0)
    text_ids = [1, 2, 3, 30, 31, 32, 4, 5, 6, 7, 8]
    prompt = make_prompt(talker, cfg, plan_prompt(cfg, text_ids, "auto", voice, False))

    def text(*ids):
        return talker.text_embed(torch.tensor(ids))

    def codec(*ids):
        return talker.codec_embed(torch.tensor(ids))

    pad, bos, eos = cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id
    expected = torch.cat(
        [
            text(1, 2, 3),  # the role
            text(pad, pad, pad) + codec(t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id),
            text(pad) + voice.speaker_embedding[None],
            text(bos) + codec(t.codec_pad_id),  # the codec prefix but its bos, ending on tts_bos
            text(30) + codec(t.codec_bos_id),  # the first token on the codec's bos
        ]
    )
    torch.testing.assert_close(prompt.embeds, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prompt.trailing, text(31, 32, eos), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prompt.pad_embed, text(pad)[0], rtol=1e-5, atol=1e-6)


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


@pytest.fixture(scope="module")
def clone_voice(tts):
    return tts.create_voice((torch.randn(24000).numpy() * 0.1, 24000))


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(categories=("L", "N", "P", "Zs")), min_size=1, max_size=40))
def test_the_frame_budget_counts_the_texts_tokens_as_the_prompt_holds_them(tts, clone_voice, text):
    """The budget's count comes from the prompt's ids (no second encode): the text's body between the
    template's ids, which is the plain encoding of any text that does not start with whitespace."""
    assume(text.strip() and not text[0].isspace())
    pipe = tts.pipeline
    try:
        req = Request(text, "clone", "english", voice=clone_voice, sampling={"max_new_tokens": 4096})
        job = pipe.prepare(req)
    except InvalidInput:  # texts the service refuses (no letters to speak) are not the point here
        assume(False)
    assert job.plan.text_tokens == len(pipe.tokenizer.encode_plain(text)) == len(job.plan.text_ids[3:-5])
    assert job.frames == frame_budget(job.sampling, job.plan.text_tokens)


@settings(max_examples=40, deadline=None)
@given(layouts)
def test_the_plan_counts_the_rows_the_prompt_has(tts, case):
    """`plan_prompt` counts, without a tensor op, the rows `make_prompt` makes, in every layout (the
    engine checks a request against its static shapes with these counts at submit time)."""
    cfg, talker = tts.pipeline.config, tts.pipeline.talker
    plan = _plan(cfg, **case)
    prompt = make_prompt(talker, cfg, plan)
    assert (plan.rows, plan.text_rows) == (prompt.embeds.shape[0], prompt.trailing.shape[0])
    assert plan.voice.icl == (case["ref_frames"] > 0 and case["ref_text"] > 0)
    assert (plan.ref_codes is None) == (not plan.voice.icl)


def test_a_job_makes_its_prompt_once_at_first_use(tts):
    voice = tts.create_voice((torch.randn(24000).numpy() * 0.1, 24000))
    made = []
    job = tts.pipeline.prepare(Request("Hello there.", "clone", "english", voice=voice, seed=1))
    make = job.make
    job.make = lambda plans: made.extend(plans) or make(plans)
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
