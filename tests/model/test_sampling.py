"""Counter-based sampling: correct in law, and a seeded request samples the same codes alone or batched.

Sampled outputs are not compared with the official code: it draws from torch's global generator with
torch.multinomial, which depends on batch composition and call order. Greedy parity is exact
(test_parity.py); here we show our sampler follows the same distribution and is reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utter_tts.api import TTS
from utter_tts.model import sampling
from utter_tts.model.sampling import choose, filter_top_k_top_p, uniform_noise, unit_interval
from utter_tts.request import Request

from .test_parity import TEXTS, reference_clip

SAMPLED = dict(max_new_tokens=24, min_new_tokens=24, temperature=0.9, top_k=50)


def test_noise_is_a_pure_function_of_its_keys():
    seeds = torch.tensor([1, 2, 3, 2**40 + 5])
    a = uniform_noise(seeds, 7, 3, 2048)
    b = uniform_noise(seeds.flip(0), 7, 3, 2048).flip(0)
    assert torch.equal(a, b)  # row order does not matter
    assert torch.equal(uniform_noise(seeds[1:2], 7, 3, 2048)[0], a[1])  # batch size does not matter
    assert not torch.equal(uniform_noise(seeds, 8, 3, 2048), a)  # the frame matters
    assert not torch.equal(uniform_noise(seeds, 7, 4, 2048), a)  # the codebook matters
    assert not torch.equal(a[1], a[3][:2048]) and (a > 0).all() and (a < 1).all()
    frames, books = torch.tensor([7, 7, 2, 9]), torch.tensor([1, 3, 15])
    many = uniform_noise(seeds, frames, books, 2048)  # codebooks at once
    for j, book in enumerate((1, 3, 15)):
        assert torch.equal(many[:, j], uniform_noise(seeds, torch.tensor([7, 7, 2, 9]), book, 2048))
    u = uniform_noise(torch.arange(64), 0, 0, 4096).flatten().numpy()
    # uniform: mean 1/2, variance 1/12, flat histogram
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    hist = np.histogram(u, bins=16, range=(0, 1))[0] / u.size
    assert np.abs(hist - 1 / 16).max() < 0.003


def test_noise_never_reaches_zero_or_one():
    ends = unit_interval(torch.tensor([0, 2**32 - 1], dtype=torch.int64))
    assert ends.dtype == torch.float32 and 0 < ends[0] and ends[1] < 1
    assert torch.isfinite(-torch.log(-torch.log(ends))).all()


def test_a_masked_token_is_never_drawn_even_at_extreme_noise(monkeypatch):
    """The largest noise value must not turn a -inf (masked) logit into NaN, which argmax would pick."""
    logits = torch.tensor([[1.0, 0.5, float("-inf"), float("-inf")]])
    top = unit_interval(torch.tensor([2**32 - 1], dtype=torch.int64))
    noise = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    noise[0, 2] = top[0]
    monkeypatch.setattr(sampling, "uniform_noise", lambda *a: noise)
    one = torch.ones(1)
    for k in (0, 1):  # no top-k, and a top-k that masks token 1 as well
        pick = choose(
            logits, torch.tensor([True]), one, torch.tensor([k]), one, torch.tensor([0]), 0, 0, True
        )
        assert int(pick) == 0


def test_sampler_follows_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 20000
    seeds = torch.arange(n)
    picks = choose(
        logits.expand(n, -1),
        torch.ones(n, dtype=torch.bool),
        torch.full((n,), 0.9),
        torch.zeros(n, dtype=torch.long),
        torch.ones(n),
        seeds,
        0,
        0,
    )
    freq = torch.bincount(picks, minlength=6).float() / n
    expected = (logits[0] / 0.9).softmax(-1)
    assert (freq - expected).abs().max() < 0.015


def test_top_k_and_top_p_follow_hf():
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 300)
    for k, p in ((50, 1.0), (5, 0.8), (300, 0.3)):
        expected = (
            TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, logits.clone()))
            if p < 1
            else (TopKLogitsWarper(k)(None, logits.clone()))
        )
        got = filter_top_k_top_p(logits.clone(), torch.full((4,), k), torch.full((4,), p))
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        n = 4000
        picks = choose(
            logits[:1].expand(n, -1),
            torch.ones(n, dtype=torch.bool),
            torch.ones(n),
            torch.full((n,), k),
            torch.full((n,), p),
            torch.arange(n),
            0,
            0,
        )
        assert bool(torch.isfinite(expected[0, picks]).all())  # never a filtered token


@pytest.fixture(scope="module")
def tts(checkpoints):
    return TTS.from_pretrained(checkpoints("base", "tiny-1.7b"), device="cpu", dtype="float32")


def test_seeded_request_same_alone_and_in_batch(tts):
    voice = tts.create_voice((reference_clip(), 24000))
    other = tts.create_voice((reference_clip(seed=2), 24000), ref_text="Some reference words.")
    target = Request(TEXTS["english"], "clone", "english", voice=voice, seed=1234, sampling=SAMPLED)
    alone = tts.generate_codes([target])[0]
    batch = tts.generate_codes(
        [
            Request(TEXTS["german"], "clone", "german", voice=other, seed=5, sampling=SAMPLED),
            target,
            Request(
                TEXTS["chinese"],
                "clone",
                "chinese",
                voice=voice,
                seed=99,
                sampling={**SAMPLED, "temperature": 0.5, "top_k": 10},
            ),
        ]
    )
    assert torch.equal(alone, batch[1])
    assert len(set(alone[:, 0].tolist())) >= 8
    again = tts.generate_codes([target])[0]
    assert torch.equal(alone, again)
    reseeded = tts.generate_codes([Request(**{**target.__dict__, "seed": 1235})])[0]
    assert not torch.equal(alone, reseeded)


def test_unseeded_requests_differ(tts):
    voice = tts.create_voice((reference_clip(), 24000))
    a, b = (tts.clone(TEXTS["english"], voice, language="english", **SAMPLED)[0] for _ in range(2))
    assert a.shape == b.shape and not np.array_equal(a, b)
