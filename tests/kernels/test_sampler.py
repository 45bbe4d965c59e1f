"""The one-launch sampler equals the eager pick_codebook0 / choose token for token; noise is bit-exact."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels.sampler import Embed, noise, sample, sample_ref  # noqa: E402
from utter_tts.model.frame import pick_codebook0, suppressed_ids  # noqa: E402
from utter_tts.model.sampling import choose, uniform_noise  # noqa: E402

from .util import must_fail, poison  # noqa: E402

SEEDS = torch.tensor([0, 1, 7, -5, 2**32 - 1, 2**32, 2**40 + 7, 2**63 - 1, -(2**63)])


@pytest.mark.parametrize("vocab", [300, 2048, 3072])
def test_noise_is_bit_identical_to_uniform_noise(vocab):
    frames = [0, 1, 17, 2**31 + 5, torch.tensor([0, 1, 5, 2**31 + 3, 9, 2**33, 1, 2, 3])]
    for frame in frames:
        for codebook in (0, 1, 15):
            got = noise(SEEDS, frame, codebook, vocab)
            assert torch.equal(got, uniform_noise(SEEDS, frame, codebook, vocab)), (frame, codebook)


def test_noise_fault_is_caught():
    # a frame counter off by one, or the wrong codebook, gives different noise (the comparison is sensitive)
    base = uniform_noise(SEEDS, 4, 3, 512)
    assert not torch.equal(noise(SEEDS, 5, 3, 512), base)
    assert not torch.equal(noise(SEEDS, 4, 4, 512), base)
    assert torch.equal(noise(SEEDS, 4, 3, 512), base)


# ---- random rows ----------------------------------------------------------------------------------------


def rows(M, V, seed, sampled=0.8, tie_logits=False):
    """Random logits and per-row settings covering the edge values of every knob."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(M, V, generator=g) * (torch.rand(M, 1, generator=g) * 4 + 0.5)
    if tie_logits:
        logits = logits.bfloat16().float()  # bf16-valued logits, as from a bf16 lm head: many exact ties
    top_k = torch.randint(-1, V + 5, (M,), generator=g)
    top_k[:7] = torch.tensor([0, 1, 50, V, V + 3, -1, 2])[: min(M, 7)]
    top_p = torch.rand(M, generator=g) * 0.95 + 0.05
    top_p[1::4] = 1.0  # off
    temperature = torch.rand(M, generator=g) * 1.5 + 0.05
    temperature[::9] = 1e-7  # clamped to 1e-5: near-greedy
    temperature[4::9] = 50.0  # near-uniform
    return dict(
        logits=logits,
        do_sample=torch.rand(M, generator=g) < sampled,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seeds=torch.randint(-(2**62), 2**62, (M,), generator=g),
        frame=torch.randint(0, 3000, (M,), generator=g),
    )


def talker_extras(r, V, eos_id, seed):
    g = torch.Generator().manual_seed(seed)
    M = r["logits"].shape[0]
    suppress = torch.zeros(V, dtype=torch.bool)
    suppress[suppressed_ids(V, eos_id)] = True
    return dict(
        seen=torch.rand(M, V, generator=g) < 0.05,
        repetition_penalty=torch.rand(M, generator=g) * 0.5 + 1.0,
        suppress=suppress,
        min_new_tokens=r["frame"] + torch.randint(-2, 3, (M,), generator=g),
        eos_id=eos_id,
    )


def pick(r, x):
    """The eager codebook-0 choice: pick_codebook0 (masks, then choose), as the frame step calls it."""
    p = SimpleNamespace(
        repetition_penalty=x["repetition_penalty"],
        min_new_tokens=x["min_new_tokens"],
        **{k: r[k] for k in ("do_sample", "temperature", "top_k", "top_p", "seeds")},
    )
    return pick_codebook0(
        r["logits"].clone(), x["seen"], r["frame"], p, x["suppress"], x["eos_id"], graph_safe=True
    )


def run(r, x=None, codebook=0, **kw):
    out = poison(r["logits"].shape[0], dtype=torch.int64)
    args = {k: v for k, v in r.items() if k != "logits"}
    return sample(r["logits"], **args, **(x or {}), codebook=codebook, out=out, **kw)


@pytest.mark.parametrize("seed", [0])
def test_talker_codebook0_equals_pick(seed):
    V, eos, n = 3072, 2150, 32
    r = rows(n, V, seed)
    x = talker_extras(r, V, eos, seed)
    r["logits"][:, eos] += 4 * (torch.arange(n) % 3 == 0)  # make EOS a contender on some rows
    got = run(r, x)
    assert torch.equal(got, pick(r, x))
    assert torch.equal(
        got, sample_ref(r["logits"], **{k: v for k, v in r.items() if k != "logits"}, **x, codebook=0)
    )
    assert (got[r["do_sample"]] != r["logits"][r["do_sample"]].argmax(-1)).any()  # really sampled


def test_greedy_rows_and_argmax_ties():
    V, eos = 2048, 1500  # the top 1024 ids are control tokens (suppressed but EOS)
    r = rows(32, V, 5, sampled=0.0, tie_logits=True)
    r["logits"][:4] = 0.0  # all tied: lowest index
    r["logits"][4, [10, 20, 30]] = 99.0
    x = talker_extras(r, V, eos, 5)
    got = run(r, x)
    assert torch.equal(got, pick(r, x))
    assert got[4] == 10


@pytest.mark.parametrize("codebook", [1, 15])
def test_code_predictor_rows_equal_choose(codebook):
    V = 2048
    r = rows(24, V, codebook)
    got = run(r, codebook=codebook)
    expected = choose(
        r["logits"],
        r["do_sample"],
        r["temperature"],
        r["top_k"],
        r["top_p"],
        r["seeds"],
        r["frame"],
        codebook,
        graph_safe=True,
    )
    assert torch.equal(got, expected)
    # the same with one frame for every row (an int), as the predictor's 15 steps of one frame
    r["frame"] = 123
    got = run(r, codebook=codebook)
    assert torch.equal(
        got,
        choose(
            r["logits"],
            r["do_sample"],
            r["temperature"],
            r["top_k"],
            r["top_p"],
            r["seeds"],
            123,
            codebook,
            graph_safe=True,
        ),
    )


def test_masks_and_min_new_tokens():
    V, eos = 512, 300
    r = rows(16, V, 9)
    x = talker_extras(r, V, eos, 9)
    x["suppress"][:] = True
    x["suppress"][[3, eos]] = False  # only token 3 and EOS are allowed
    r["logits"][:, eos] = 50.0  # EOS dominates unless it is held back
    x["min_new_tokens"] = torch.where(torch.arange(16) < 8, r["frame"] + 1, r["frame"])
    got = run(r, x)
    assert torch.equal(got, pick(r, x))
    assert (got[:8] == 3).all() and (got[8:] == eos).all()


def test_top_p_ties_keep_the_whole_group():
    """Documented difference: tied values at the top-p cut are all kept (the reference keeps those its
    unstable sort puts last). Logits [2, 1, 1, 0, ...] with top_p just above p(2): the cut falls inside
    the tie, so over many seeds both tied tokens are drawn and nothing below them."""
    V, M = 64, 64
    logits = torch.full((M, V), -30.0)
    logits[:, 0], logits[:, 1], logits[:, 2] = 2.0, 1.0, 1.0
    p0 = torch.softmax(logits[0], -1)[0].item()
    r = dict(
        logits=logits,
        do_sample=torch.ones(M, dtype=torch.bool),
        temperature=torch.ones(M),
        top_k=torch.zeros(M, dtype=torch.long),
        top_p=torch.full((M,), p0 + 0.01),
        seeds=torch.arange(M),
        frame=0,
    )
    got = run(r)
    assert set(got.tolist()) == {0, 1, 2}


def test_embedding_epilogue_builds_the_talker_input_bit_for_bit():
    """Codebook 0 then the 15 predictor codebooks, each launch gathering its embedding: the running sum
    equals the eager Talker.frame_embed(codes) + text in bf16 (same order, same roundings), and `out`
    holds the next step's input."""
    from utter_tts.model.config import CodePredictorConfig, TalkerConfig
    from utter_tts.model.talker import Talker

    torch.manual_seed(3)
    cp = CodePredictorConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_code_groups=16,
    )
    cfg = TalkerConfig(
        code_predictor=cp,
        vocab_size=50,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=12,
        num_code_groups=16,
        text_hidden_size=24,
        text_vocab_size=10,
    )
    talker = Talker(cfg).to(torch.bfloat16)
    M, H = 5, 24
    text = torch.randn(M, H).bfloat16()
    acc, nxt = poison(M, H, dtype=torch.bfloat16), poison(M, H, dtype=torch.bfloat16)
    codes = poison(M, 16, dtype=torch.int64)
    for k in range(16):
        table = (
            talker.model.codec_embedding.weight
            if k == 0
            else talker.code_predictor.model.codec_embedding[k - 1].weight
        )
        r = rows(M, table.shape[0], 100 + k)
        e = Embed(table.detach(), out=nxt, acc=acc, start=k == 0, add=text if k == 15 else None)
        if k == 0:
            sample(
                r["logits"],
                **{kk: v for kk, v in r.items() if kk != "logits"},
                codebook=0,
                out=codes[:, 0],
                embed=e,
            )
        else:
            codes[:, k] = run(r, codebook=k, embed=e)
        assert torch.equal(nxt, table.detach()[codes[:, k]])
    with torch.no_grad():
        expected = talker.frame_embed(codes) + text
        tables = [talker.model.codec_embedding] + list(talker.code_predictor.model.codec_embedding)
        summed_in_fp32 = sum(t.weight[codes[:, k]].float() for k, t in enumerate(tables)) + text.float()
    assert torch.equal(acc, expected)
    must_fail(same_as, acc, expected - text)  # a missing addend shows
    must_fail(same_as, acc, summed_in_fp32.bfloat16())  # so does rounding once instead of after every add


def test_sampling_faults_are_caught():
    V, n = 2048, 24
    r = rows(n, V, 21, sampled=1.0)
    r["top_k"] = torch.randint(2, 5, (n,))  # a few candidates each: the noise and k decide
    r["top_p"] = torch.ones(n)
    r["temperature"] = torch.full((n,), 2.0)
    got = run(r, codebook=2)

    def eager(frame=r["frame"], codebook=2, top_k=r["top_k"], top_p=r["top_p"]):
        args = (r["logits"], r["do_sample"], r["temperature"], top_k, top_p, r["seeds"])
        return choose(*args, frame, codebook, graph_safe=True)

    same_as(got, eager())
    must_fail(same_as, got, eager(frame=r["frame"] + 1))  # noise frame counter off by one
    must_fail(same_as, got, eager(codebook=3))  # wrong codebook key
    must_fail(same_as, got, eager(top_k=r["top_k"] + 1))  # top-k off by one
    r["top_k"] = torch.zeros(n, dtype=torch.long)
    r["top_p"] = torch.full((n,), 0.5)
    got = run(r, codebook=2)
    same_as(got, eager(top_k=r["top_k"], top_p=r["top_p"]))
    must_fail(same_as, got, eager(top_k=r["top_k"], top_p=torch.full((n,), 0.6)))  # another cut
    V, eos = 3072, 2150
    t = rows(n, V, 22)
    x = talker_extras(t, V, eos, 22)
    x["repetition_penalty"][:] = 3.0
    x["seen"][:, :64] = True
    t["logits"][:, :64] += 3.0  # seen tokens are the likely ones: the penalty decides
    t["logits"][:, eos] += 8.0  # and EOS, where it is allowed
    x["min_new_tokens"] = t["frame"] + (torch.arange(n) % 2)  # every second row holds EOS back
    got0 = run(t, x)
    assert torch.equal(got0, pick(t, x))
    flipped = dict(x, repetition_penalty=1 / x["repetition_penalty"])  # penalty the wrong way round
    must_fail(same_as, got0, pick(t, flipped))
    must_fail(same_as, got0, pick(t, dict(x, min_new_tokens=x["min_new_tokens"] - 1)))  # min_new off by one


def same_as(a, b):
    assert torch.equal(a, b)


@pytest.mark.parametrize("radix_bits,early_exit", [(8, True), (8, False), (4, True), (4, False)])
def test_every_top_k_select_equals_choose(radix_bits, early_exit):
    """The top-k select's tunings (digit width, early exit once a bin holds exactly the tokens still
    needed) all keep exactly HF's top-k: distinct logits, bf16-valued ones with many ties at the cut,
    and rows where the k-th value repeats across the bins' boundary."""
    V = 2048
    for tie in (False, True):
        r = rows(48, V, 31 + tie, sampled=1.0, tie_logits=tie)
        r["top_p"] = torch.ones(48)
        r["temperature"][::2] = 50.0  # near uniform over the kept tokens: any wrong member shows
        r["top_k"] = torch.tensor([1, 2, 3, 5, 50, 64, 255, 256, 257, 1000, 2047, 2048] * 4)
        r["logits"][40:] = torch.randint(-3, 4, (8, V)).float()  # 7 values: the k-th sits in a big tie
        got = run(r, codebook=4, radix_bits=radix_bits, early_exit=early_exit)

        def eager(r=r):
            args = [r[k] for k in ("logits", "do_sample", "temperature", "top_k", "top_p", "seeds", "frame")]
            return choose(*args, 4, graph_safe=True)

        assert torch.equal(got, eager())
        r["top_k"] = r["top_k"] - 1  # the same rows with k one less pick differently somewhere
        must_fail(same_as, got, eager())
