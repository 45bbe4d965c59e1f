"""Prompt building's shared pieces: template and control tokens embedded once per talker, exactly."""

from __future__ import annotations

import pytest
import torch

from utter_tts.api import TTS
from utter_tts.device import to_device
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
