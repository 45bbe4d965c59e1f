"""q/k norm + M-RoPE + cache write, and decode attention: against the references and the eager Attention."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels.attention import (  # noqa: E402
    decode_attention,
    decode_attention_ref,
    qk_norm_rope_write,
    qk_norm_rope_write_ref,
)
from utter_tts.kernels.linear import linear  # noqa: E402
from utter_tts.model.layers import Attention, Decoder, KVCache, Rotary  # noqa: E402

from .util import DTYPES, TOL, close, must_fail, poison  # noqa: E402

# (heads, kv_heads, head_dim): GQA ratios 1, 2, 3, 4; odd head counts; head_dim 8, 16 and not powers of 2
SHAPES = [(3, 3, 16), (4, 2, 8), (6, 2, 24), (8, 2, 48)]
ROTARIES = {
    "mrope-interleaved": lambda d: Rotary(d, 1e6, [d // 6, d // 6, d // 2 - 2 * (d // 6)], True),
    "mrope-contiguous": lambda d: Rotary(d, 1e6, [d // 6, d // 6, d // 2 - 2 * (d // 6)], False),
    "rope": lambda d: Rotary(d, 1e4),
}


def distinct_positions(M, seed=0):
    """pos [3, M] with a different value on each axis (so a wrong axis choice shows)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, 60, (M,), generator=g) for _ in range(3)])


# ---- qk_norm_rope_write -----------------------------------------------------------------------------------


def qk_case(M, heads, kv, D, dtype, rotary="mrope-interleaved", S=4, L=12, seed=0, row_stride=1):
    g = torch.Generator().manual_seed(seed)
    width = (heads + 2 * kv) * D
    qkv = torch.randn(M * row_stride, width, generator=g).to(dtype)[::row_stride]
    rot = ROTARIES[rotary](D)
    return dict(
        qkv=qkv,
        q_norm_w=(torch.rand(D, generator=g) + 0.5).to(dtype),
        k_norm_w=(torch.rand(D, generator=g) + 0.5).to(dtype),
        inv_freq=rot.inv_freq,
        axis_of=rot.axis_of,
        pos=distinct_positions(M, seed),
        slot=torch.randperm(S, generator=g)[:M] if M <= S else torch.randint(0, S, (M,), generator=g),
        col=torch.randint(0, L - 1, (M,), generator=g),
        shape=(S, kv, L, D),
        heads=heads,
        kv_heads=kv,
        head_dim=D,
    )


def check_qk(c, dtype, ref=qk_norm_rope_write_ref):
    args = [c[k] for k in ("qkv", "q_norm_w", "k_norm_w", "inv_freq", "axis_of", "pos", "slot", "col")]
    kw = dict(heads=c["heads"], kv_heads=c["kv_heads"], head_dim=c["head_dim"], eps=1e-6)
    ck, cv = poison(*c["shape"], dtype=dtype), poison(*c["shape"], dtype=dtype)
    rk, rv = ck.clone(), cv.clone()
    M = c["qkv"].shape[0]
    q = qk_norm_rope_write(*args, ck, cv, **kw, q_out=poison(M, c["heads"], c["head_dim"], dtype=dtype))
    close(q, ref(*args, rk, rv, **kw), dtype)
    # written columns equal; every other cache element still NaN (untouched)
    torch.testing.assert_close(ck.float(), rk.float(), equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(cv.float(), rv.float(), equal_nan=True, **TOL[dtype])


# every shape and batch in fp32; bf16 (the production dtype, through the patched interpreter) at batch 3
CASES = [(b, s, torch.float32) for b in (1, 3, 8) for s in SHAPES] + [(3, s, torch.bfloat16) for s in SHAPES]


@pytest.mark.parametrize("M,shape,dtype", CASES)
def test_qk_norm_rope_write(M, shape, dtype):
    check_qk(qk_case(M, *shape, dtype, seed=M), dtype)


@pytest.mark.parametrize("rotary", list(ROTARIES))
def test_qk_norm_rope_write_rotaries_and_strided_rows(rotary):
    check_qk(qk_case(3, 6, 2, 24, torch.float32, rotary, row_stride=2), torch.float32)


@pytest.mark.parametrize("rotary", ["mrope-interleaved", "mrope-contiguous"])
def test_reference_rope_is_the_eager_rotary(rotary):
    """The reference's M-RoPE (angle of frequency j from axis axis_of[j]) equals the eager Rotary +
    Attention.forward formula, with distinct positions per axis."""
    D, M = 24, 5
    rot = ROTARIES[rotary](D)
    pos = distinct_positions(M, 3)
    x = torch.randn(M, D)
    cos, sin = rot(pos[:, None], torch.float32)  # [1, M, D]
    half = D // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # Decoder.tables' sign folding
    eager = (x * cos + x.roll(half, dims=-1) * sin)[0]
    # the reference, with unit norms undone: feed x as k with norm weight 1 and compare up to the rstd
    qkv = torch.cat([x, torch.zeros(M, D)], dim=1)  # no q heads: k = x, v = 0
    ck, cv = torch.zeros(1, 1, M, D), torch.zeros(1, 1, M, D)
    slot, col = torch.zeros(M, dtype=torch.long), torch.arange(M)
    one = torch.ones(D)
    shape = dict(heads=0, kv_heads=1, head_dim=D, eps=0.0)
    qk_norm_rope_write_ref(qkv, one, one, rot.inv_freq, rot.axis_of, pos, slot, col, ck, cv, **shape)
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True))
    close(ck[0, 0], eager * rstd, torch.float32)
    assert rot.axis_of.unique().numel() == 3  # the test really mixes the three axes


@pytest.mark.parametrize("rotary", ["mrope-interleaved", "mrope-contiguous", "rope"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_block_matches_eager_attention_forward(rotary, dtype):
    """linear(QKV) -> qk_norm_rope_write -> decode_attention -> linear(o) == eager Attention.forward, for
    2 streams x 3 new tokens after 2 cached columns (distinct positions per axis, GQA 3, head_dim 24)."""
    torch.manual_seed(7)
    B, T, hidden, H, KV, D, L = 2, 3, 40, 6, 2, 24, 8
    attn = Attention(hidden, H, KV, D, 1e-6, bias=True)
    torch.nn.init.uniform_(attn.q_norm.weight, 0.5, 1.5)
    torch.nn.init.uniform_(attn.k_norm.weight, 0.5, 1.5)
    attn = attn.to(dtype)
    rot = ROTARIES[rotary](D)
    x = torch.randn(B, T, hidden).to(dtype)
    cols = torch.tensor([[2, 3, 4], [4, 5, 6]])
    start = torch.tensor([0, 1])
    positions = torch.stack([cols - start[:, None], cols * 2, cols + 5])  # [3, B, T], distinct axes
    old = torch.randn(B, KV, L, D).to(dtype)
    cache = KVCache(old.clone(), old.clone().flip(-1))
    cos, sin, mask = Decoder.tables(positions, cols, start, L, rot, dtype)
    rep = H // KV
    mask = mask.unsqueeze(2).expand(-1, -1, rep, -1, -1).reshape(B, 1, rep * T, L)  # as Decoder.run_with
    with torch.no_grad():
        expected = attn(x, cos, sin, cols, mask, cache)
        w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        b_qkv = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        ck, cv = old.clone(), old.clone().flip(-1)
        M = B * T
        slot = torch.arange(B).repeat_interleave(T)
        ck[slot, :, cols.reshape(M)] = float("nan")  # the new tokens' columns: written before they are read
        cv[slot, :, cols.reshape(M)] = float("nan")
        qkv = linear(x.reshape(M, hidden), w_qkv, b_qkv)
        norms = (attn.q_norm.weight, attn.k_norm.weight)
        pos, col = positions.reshape(3, M), cols.reshape(M)
        shape = dict(heads=H, kv_heads=KV, head_dim=D, eps=1e-6)
        q = qk_norm_rope_write(qkv, *norms, rot.inv_freq, rot.axis_of, pos, slot, col, ck, cv, **shape)
        y = decode_attention(q, ck, cv, slot, col, start.repeat_interleave(T), num_splits=2)
        y = linear(y, attn.o_proj.weight, attn.o_proj.bias)
    loose = dict(rtol=3e-2, atol=3e-2) if dtype == torch.bfloat16 else {}  # the eager rounds per op in bf16
    close(y, expected.reshape(M, hidden), dtype, **loose)
    written = (slot, slice(None), cols.reshape(M))
    close(ck[written], cache.k[written], dtype, **loose)
    close(cv[written], cache.v[written], dtype, **loose)


# ---- decode_attention -------------------------------------------------------------------------------------


def attn_case(rows, heads, kv, D, dtype, S=5, L=40, seed=0, q_stride=1):
    """rows: (slot, start, col) per query row. Cache columns no row can see are NaN."""
    g = torch.Generator().manual_seed(seed)
    M = len(rows)
    ck = torch.randn(S, kv, L, D, generator=g).to(dtype)
    cv = torch.randn(S, kv, L, D, generator=g).to(dtype)
    seen = torch.zeros(S, L, dtype=torch.bool)
    for s, a, c in rows:
        seen[s, min(a, c) : c + 1] = True
    ck.masked_fill_(~seen[:, None, :, None], float("nan"))
    cv.masked_fill_(~seen[:, None, :, None], float("nan"))
    q = torch.randn(M * q_stride, heads, D, generator=g).to(dtype)[::q_stride]
    slot, start, col = (torch.tensor(v) for v in zip(*rows))
    return dict(q=q, cache_k=ck, cache_v=cv, slot=slot, col=col, start=start)


def check_attn(c, dtype, splits, ref=decode_attention_ref):
    M, H, D = c["q"].shape
    args = [c[k] for k in ("q", "cache_k", "cache_v", "slot", "col", "start")]
    y = decode_attention(*args, out=poison(M, H * D, dtype=dtype), num_splits=splits)
    clean = [a.nan_to_num() if a.is_floating_point() else a for a in args]  # the SDPA reference masks
    close(y, ref(*clean), dtype)


DECODE_ROWS = {
    1: [(2, 0, 33)],
    3: [(0, 0, 5), (3, 4, 39), (1, 10, 20)],
    8: [(s % 5, s, 3 + 4 * s) for s in range(8)],
}
PREFILL_ROWS = [(1, 0, c) for c in range(4)] + [(4, 2, c) for c in range(2, 7)]  # causal, 2 streams


@pytest.mark.parametrize("batch,shape,dtype", CASES)
def test_decode_attention(batch, shape, dtype):
    c = attn_case(DECODE_ROWS[batch], *shape, dtype, seed=batch)
    check_attn(c, dtype, splits=1)
    check_attn(c, dtype, splits=3)


@pytest.mark.parametrize("splits", [1, 2, 7])
def test_decode_attention_packed_prefill_and_empty_splits(splits):
    # 7 splits of 1..5 visible columns: most splits are empty
    check_attn(attn_case(PREFILL_ROWS, 6, 2, 24, torch.float32, q_stride=2), torch.float32, splits)


def test_row_before_its_start_sees_only_itself():
    c = attn_case([(0, 9, 4), (1, 0, 0)], 4, 2, 16, torch.float32)
    y = decode_attention(*[c[k] for k in ("q", "cache_k", "cache_v", "slot", "col", "start")], num_splits=1)
    v = c["cache_v"][0, :, 4].repeat_interleave(2, dim=0).reshape(-1)  # softmax over one key = its value
    close(y[0], v, torch.float32)


def test_long_context_splits():
    # ~300 visible columns in 64-column blocks, split 4 ways: several blocks per split
    c = attn_case([(0, 3, 300), (1, 0, 150)], 8, 2, 16, torch.float32, S=2, L=320)
    check_attn(c, torch.float32, splits=4)


# ---- planted faults ---------------------------------------------------------------------------------------


def test_qk_faults_are_caught():
    c = qk_case(3, 6, 2, 24, torch.float32, seed=11)
    ref = qk_norm_rope_write_ref

    def section_shifted(*a, **kw):  # each frequency takes the next axis' position
        a = list(a)
        a[4] = (a[4] + 1) % 3
        return ref(*a, **kw)

    def column_off_by_one(*a, **kw):
        a = list(a)
        a[7] = a[7] + 1
        return ref(*a, **kw)

    def k_uses_q_norm(*a, **kw):
        a = list(a)
        a[2] = a[1]
        return ref(*a, **kw)

    def rotate_sign_flipped(qkv, qw, kw_, inv_freq, *a, **kw):
        return ref(qkv, qw, kw_, -inv_freq, *a, **kw)  # sin(-x) = -sin(x): rotation the other way

    for fault in (section_shifted, column_off_by_one, k_uses_q_norm, rotate_sign_flipped):
        must_fail(check_qk, c, torch.float32, ref=fault)


def test_attention_faults_are_caught():
    c = attn_case(DECODE_ROWS[3], 6, 2, 24, torch.float32, seed=3)
    ref = decode_attention_ref

    def gqa_modulo(q, ck, cv, slot, col, start, **kw):  # query head h reads kv head h % kv_heads
        kv_of = torch.arange(q.shape[1]) % ck.shape[1]
        return ref(q, ck[:, kv_of], cv[:, kv_of], slot, col, start)

    def excludes_own_column(q, ck, cv, slot, col, start, **kw):
        return ref(q, ck, cv, slot, col - 1, torch.minimum(start, col - 1))

    def ignores_start(q, ck, cv, slot, col, start, **kw):
        return ref(q, ck, cv, slot, col, torch.zeros_like(start))

    def one_column_too_many(q, ck, cv, slot, col, start, **kw):
        return ref(q, ck, cv, slot, col + 1, start)

    for fault in (gqa_modulo, excludes_own_column, ignores_start, one_column_too_many):
        for splits in (1, 3):
            must_fail(check_attn, c, torch.float32, splits, ref=fault)
