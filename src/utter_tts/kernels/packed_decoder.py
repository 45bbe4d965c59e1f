"""PackedDecoder: an eager `Decoder` with weights packed once, run over packed tokens in 6 launches a layer.

Per layer: (1) input RMSNorm + QKV projection (`linear`, norm as prologue); (2) q/k RMSNorm + M-RoPE
+ cache write (`qk_norm_rope_write`); (3) attention (`decode_attention`; a 7th launch combines the
column splits when it splits, i.e. long caches at small batch); (4) o-projection + residual; (5)
post-attention RMSNorm + gate/up + SiLU (`gate_up_silu`); (6) down-projection + residual. The result is
the hidden state BEFORE the final norm: the caller fuses that norm into the next linear
(`linear(h, head_w, norm_weight=packed.final_norm)`). Where the norms run "separate" (tensor-core tiles),
(4) and (6) also write the normalized operand of (5) and of the next layer's (1) (`linear`'s norm_out),
so no norm launch of its own runs except the first layer's.

weights="int8" / "fp8": the four GEMM weights of every layer (QKV, o, gate/up, down) are quantized once
here (`quantize_weight`, per output channel); norms, biases and the eager modules' weights stay as loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utter_tts.kernels.attention import decode_attention, default_splits, flash_prefill, qk_norm_rope_write
from utter_tts.kernels.linear import (
    QuantWeight,
    config_for,
    gate_up_silu,
    linear,
    pack_gate_up,
    quantize_weight,
    resolve_norm_mode,
)

# An eager pass of up to this many rows (one or two prompts' prefill) is bound by Python launching its
# kernels, not by the GPU: one stream's admission took 16-22 ms with one launch per linear and 26-32 ms
# with split-K and separate norm launches (H200 runs, 2026-11-30). Past it, the GPU work dominates and
# the prologue's re-read of every row per program costs more than a launch.
EAGER_PROLOGUE_ROWS = 256


@dataclass
class PackedLayer:
    ln1: torch.Tensor  # input_layernorm.weight [hidden]
    w_qkv: torch.Tensor | QuantWeight  # [(heads + 2 kv_heads) head_dim, hidden]
    b_qkv: torch.Tensor | None
    q_norm: torch.Tensor  # [head_dim]
    k_norm: torch.Tensor
    w_o: torch.Tensor | QuantWeight  # [hidden, heads head_dim]
    b_o: torch.Tensor | None
    ln2: torch.Tensor  # post_attention_layernorm.weight
    w_gate_up: torch.Tensor | QuantWeight  # [2 inter, hidden], pack_gate_up
    w_down: torch.Tensor | QuantWeight  # [hidden, inter]

    def quantize(self, mode: str) -> None:
        for name in GEMM_FIELDS:
            setattr(self, name, quantize_weight(getattr(self, name), mode))


GEMM_FIELDS = ("w_qkv", "w_o", "w_gate_up", "w_down")
STACKED_FIELDS = ("ln1", "w_qkv", "b_qkv", "q_norm", "k_norm", "w_o", "b_o", "ln2", "w_gate_up", "w_down")


class LayerStacks:
    """Every layer's copy of a field in one [layers, ...] tensor (each layer's field a view of its row), so
    one kernel reaches layer l's weights at base + l * stride (`kernels.decoder_step`). Filled layer by
    layer: the load's peak grows by the stacked fields, not by a second copy of the decoder."""

    def __init__(self, layers: int):
        self.layers = layers
        self.t: dict[str, torch.Tensor] = {}
        # what `decoder_step` keeps per decoder between launches (barrier counters, K-split partials),
        # made on its first launch
        self.scratch: dict[str, torch.Tensor] = {}

    def put(self, name: str, i: int, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        s = self.t.get(name)
        if s is None:
            s = self.t[name] = torch.empty((self.layers, *t.shape), dtype=t.dtype, device=t.device)
        assert s.shape[1:] == t.shape and s.dtype == t.dtype, (name, s.shape, t.shape)
        s[i].copy_(t)
        return s[i]

    def put_weight(self, name: str, i: int, w: torch.Tensor | QuantWeight) -> torch.Tensor | QuantWeight:
        if isinstance(w, QuantWeight):
            return QuantWeight(self.put(name, i, w.q), self.put(name + ".scale", i, w.scale), w.dtype)
        return self.put(name, i, w)

    def get(self, name: str) -> torch.Tensor | None:
        return self.t.get(name)


def _cat_bias(*linears) -> torch.Tensor | None:
    if linears[0].bias is None:
        return None
    return torch.cat([lin.bias.detach() for lin in linears]).contiguous()


class PackedDecoder:
    """Built once from an eager `utter_tts.model.layers.Decoder` (QKV packed in one [N, hidden] weight,
    gate and up in one) and its `Rotary` (inv_freq, axis_of). The eager modules' weights then become views
    of the packed tensors, so a model served both ways holds its weights once (the A10G budget counts).
    norm_mode: how the fused RMSNorms round (kernels.linear; None: by row count). weights: "bf16" (as
    loaded), "int8" or "fp8" (the layers' GEMM weights quantized; the eager modules keep theirs)."""

    def __init__(
        self, decoder, rotary, norm_mode: str | None = None, weights: str = "bf16", stacked: bool = False
    ):
        self.norm_mode = norm_mode
        self.weights = weights
        # stacked: every field in LayerStacks (what the one-launch `decoder_step` reads)
        self.stacks = LayerStacks(len(decoder.layers)) if stacked else None
        attn0 = decoder.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = attn0.heads, attn0.kv_heads, attn0.head_dim
        self.eps = decoder.norm.eps
        self.hidden = decoder.norm.weight.shape[0]
        self.inter = decoder.layers[0].mlp.gate_proj.out_features
        self.layers: list[PackedLayer] = []
        with torch.no_grad():
            for layer in decoder.layers:
                a, mlp = layer.self_attn, layer.mlp
                self.layers.append(
                    PackedLayer(
                        ln1=layer.input_layernorm.weight.detach().contiguous(),
                        w_qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous(),
                        b_qkv=_cat_bias(a.q_proj, a.k_proj, a.v_proj),
                        q_norm=a.q_norm.weight.detach().contiguous(),
                        k_norm=a.k_norm.weight.detach().contiguous(),
                        w_o=a.o_proj.weight.detach().contiguous(),
                        b_o=a.o_proj.bias.detach().contiguous() if a.o_proj.bias is not None else None,
                        ln2=layer.post_attention_layernorm.weight.detach().contiguous(),
                        w_gate_up=pack_gate_up(mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()),
                        w_down=mlp.down_proj.weight.detach().contiguous(),
                    )
                )
                packed = self.layers[-1]
                i = len(self.layers) - 1
                if self.stacks is not None:  # the rows of the stacks; the eager modules share them below
                    for name in STACKED_FIELDS:
                        setattr(packed, name, self.stacks.put(name, i, getattr(packed, name)))
                    _share(packed.ln1, layer.input_layernorm.weight)
                    _share(packed.ln2, layer.post_attention_layernorm.weight)
                    _share(packed.q_norm, a.q_norm.weight)
                    _share(packed.k_norm, a.k_norm.weight)
                    _share(packed.w_o, a.o_proj.weight)
                    _share(packed.w_down, mlp.down_proj.weight)
                    if packed.b_o is not None:
                        _share(packed.b_o, a.o_proj.bias)
                _share(packed.w_qkv, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
                if packed.b_qkv is not None:
                    _share(packed.b_qkv, a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
                _share(packed.w_gate_up, mlp.gate_proj.weight, mlp.up_proj.weight)
                if weights != "bf16":  # after sharing: the eager modules keep the weights as loaded
                    packed.quantize(weights)
                    if self.stacks is not None:
                        for name in GEMM_FIELDS:
                            q = self.stacks.put_weight(name + ".q", i, getattr(packed, name))
                            setattr(packed, name, q)
            self.final_norm = decoder.norm.weight.detach().contiguous()
            device = self.final_norm.device
            self.inv_freq = rotary.inv_freq.detach().float().to(device).contiguous()
            self.axis_of = rotary.axis_of.detach().to(device=device, dtype=torch.int32).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        slot: torch.Tensor,
        col: torch.Tensor,
        pos: torch.Tensor,
        start: torch.Tensor,
        caches,
        out: torch.Tensor | None = None,
        num_splits: int | None = None,
        eager: bool = False,
        varlen: tuple[torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        """x [M, hidden] packed tokens (rows may be strided) -> hidden [M, hidden] before the final norm.

        slot, col, start [M] int64 and pos [A, M] as in kernels.attention; caches: one (k, v) pair (or an
        eager KVCache with .k, .v) per layer, each [S, kv_heads, L, head_dim]. Rows' keys are written at
        (slot, col) in every layer. out may be x itself (updated in place). Buffers are allocated from
        the shapes only, so the pass can be captured in a CUDA graph. eager=True (a pass launched
        from Python, not replayed from a graph: the prefill): fewer launches, since each costs tens of
        microseconds of Python there: no split-K, and up to EAGER_PROLOGUE_ROWS rows the RMSNorm in the
        GEMM's prologue instead of its own kernel. varlen = (cu_seqlens int32 [n + 1], longest): the rows
        are n whole prompts in order, each from its cache column 0 (a prefill): attention runs as
        FlashAttention-2 over the packed rows (`flash_prefill`) instead of reading the caches."""
        M = x.shape[0]
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        dev, dt = x.device, self.final_norm.dtype
        h = out if out is not None else torch.empty(M, self.hidden, dtype=x.dtype, device=dev)
        qkv = torch.empty(M, (H + 2 * KV) * D, dtype=dt, device=dev)
        q = torch.empty(M, H, D, dtype=dt, device=dev)
        attn = torch.empty(M, H * D, dtype=dt, device=dev)
        act = torch.empty(M, self.inter, dtype=dt, device=dev)
        ck0 = _kv(caches[0])[0]
        k_rows = torch.empty(M, KV, D, dtype=dt, device=dev) if varlen is not None else None
        splits = num_splits or default_splits(M, KV, ck0.shape[2], dev)
        ws = None
        if splits > 1:  # one workspace for every layer's split attention
            ws = (
                torch.empty(M, H, splits, D, dtype=torch.float32, device=dev),
                torch.empty(M, H, splits, dtype=torch.float32, device=dev),
            )
        shape = dict(heads=H, kv_heads=KV, head_dim=D, eps=self.eps)
        mode, tile = self.norm_mode, None
        if eager:
            tile = config_for(M)  # the row bucket's tile, K not split
            if mode is None and tile.use_dot and M <= EAGER_PROLOGUE_ROWS:
                mode = "prologue"
        # "separate" norms come from the residual GEMM before them: one buffer serves both, as each
        # operand is consumed by the next GEMM before the following residual GEMM overwrites it
        fuse = resolve_norm_mode(M, mode) == "separate"
        normed = torch.empty(M, self.hidden, dtype=dt, device=dev) if fuse else None
        resid = x
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            ck, cv = _kv(cache)
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            fused_in = fuse and i > 0  # the previous down-projection wrote it
            linear(
                normed if fused_in else resid, layer.w_qkv, layer.b_qkv, eps=self.eps,
                norm_weight=None if fused_in else layer.ln1, out=qkv, norm_mode=mode, config=tile,
            )  # fmt: skip
            rope = (self.inv_freq, self.axis_of, pos, slot, col)
            qk_norm_rope_write(qkv, layer.q_norm, layer.k_norm, *rope, ck, cv, **shape, q_out=q, k_out=k_rows)
            if varlen is not None:  # v as the QKV projection holds it (what the cache got)
                v_rows = qkv[:, (H + KV) * D :].view(M, KV, D)
                attn = flash_prefill(q, k_rows, v_rows, *varlen)
            else:
                decode_attention(q, ck, cv, slot, col, start, out=attn, num_splits=splits, workspace=ws)
            linear(
                attn, layer.w_o, layer.b_o, residual=resid, out=h, config=tile, eps=self.eps,
                norm_out=(layer.ln2, normed) if fuse else None,
            )  # fmt: skip
            gate_up_silu(
                normed if fuse else h, None if fuse else layer.ln2, layer.w_gate_up, self.eps, out=act,
                norm_mode=mode, config=tile,
            )  # fmt: skip
            # the last layer's final norm: the caller's head GEMM
            linear(
                act, layer.w_down, residual=h, out=h, config=tile, eps=self.eps,
                norm_out=(nxt.ln1, normed) if fuse and nxt is not None else None,
            )  # fmt: skip
            resid = h
        return h

    __call__ = forward


def _share(packed: torch.Tensor, *params: torch.nn.Parameter) -> None:
    """Point each parameter at its rows of `packed` (in order), freeing its own copy. Only where the rows
    are that parameter exactly (pack_gate_up's layout is gate rows then up rows)."""
    start = 0
    for p in params:
        rows = packed[start : start + p.shape[0]]
        if rows.shape == p.shape and torch.equal(rows, p.data):
            p.data = rows
        start += p.shape[0]


def _kv(cache) -> tuple[torch.Tensor, torch.Tensor]:
    return (cache.k, cache.v) if hasattr(cache, "k") else (cache[0], cache[1])
