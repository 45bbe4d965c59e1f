"""The frame step in fused Triton kernels: what `FrameBatch.step` does, on the same state, in ~700 launches.

`FrameBatch.step` (model/frame.py) is the reference and the CPU path; this is its CUDA backend. Per frame:
the code predictor's first step runs both of its input rows (the talker's hidden state and codebook 0's
embedding) through the input projection and 5 layers, then 14 one-row steps follow; each step's head
(final norm fused) feeds the one-launch sampler, whose epilogue gathers the next step's input and adds
the codebook's embedding into the running sum that becomes the talker's input (the text embedding is
added at the last codebook). The talker then runs 28 layers, its final norm, its head and the
codebook-0 sampler (repetition penalty over the seen-mask, suppressed control ids, min_new_tokens).
Layers are `kernels.packed_decoder.PackedDecoder` (6-7 launches each). Attention reads exactly the columns a
row has written, so one graph per batch serves every cache length.

weights="int8" / "fp8" (8-bit weights, scaled per output channel): every decoder layer's QKV, o, gate/up
and down weights and the code predictor's input projection. The heads (the codebook logits themselves,
where every rounding lands on a sampled logit; ~1.4% of a 1.7B frame's weight bytes, ~3% of an 8-bit
one's) and the embedding tables (gathers, not GEMMs) stay as loaded.
"""

from __future__ import annotations

import logging
import weakref

import torch

from utter_tts.device import env_choice, to_device
from utter_tts.kernels import decoder_step as one_launch
from utter_tts.kernels.attention import flash_prefill_usable
from utter_tts.kernels.linear import linear, quantize_weight
from utter_tts.kernels.packed_decoder import PackedDecoder
from utter_tts.kernels.sampler import Embed, sample
from utter_tts.model.config import SamplingConfig
from utter_tts.model.frame import FrameBatch, SamplingParams
from utter_tts.model.prompt import Prompt

PASSES = ("layers", "one-launch")
log = logging.getLogger(__name__)
# The FusedFrame per GPU whose passes may run as one persistent launch. Two engines' frame graphs run on
# their own streams at the same time, and a grid-synced launch needs every program of its grid resident:
# two such grids of one program per SM each need two programs per SM, which an sm_86 (shared memory)
# cannot hold, so both would wait on each other. One owner per GPU; the others run as layers.
_ONE_LAUNCH_OWNER: dict[int, weakref.ref] = {}


def claim_one_launch(index: int, frame: object) -> bool:
    """Make `frame` GPU `index`'s one-launch owner unless another live one is (then False)."""
    owner = _ONE_LAUNCH_OWNER.get(index)
    current = owner() if owner is not None else None
    if current is not None and current is not frame:
        return False
    _ONE_LAUNCH_OWNER[index] = weakref.ref(frame)
    return True


# How a decoder's passes launch: "layers" (PackedDecoder, 6 launches a layer; the default) or "one-launch"
# (`kernels.decoder_step`: every layer in one persistent launch, grid-synced; not yet timed on a GPU, so
# not the default). UTTER_TTS_PREDICTOR_PASS chooses for the code predictor, UTTER_TTS_TALKER_PASS for the
# talker (at most decoder_step.MAX_ROWS streams; more run as layers).
def predictor_pass_setting() -> str:
    return env_choice("UTTER_TTS_PREDICTOR_PASS", PASSES, "layers")


def talker_pass_setting() -> str:
    return env_choice("UTTER_TTS_TALKER_PASS", PASSES, "layers")


class FusedFrame:
    """The fused frame step of a FrameBatch (weights packed once from its talker; weights: "bf16" as
    loaded, or "int8" / "fp8", quantized once here, see the module docstring). predictor_pass: see
    `predictor_pass_setting` (its default)."""

    def __init__(
        self,
        batch: FrameBatch,
        weights: str = "bf16",
        predictor_pass: str | None = None,
        talker_pass: str | None = None,
    ):
        self.batch = batch
        self.weights = weights
        self.predictor_pass = predictor_pass or predictor_pass_setting()
        self.talker_pass = talker_pass or talker_pass_setting()
        assert self.predictor_pass in PASSES and self.talker_pass in PASSES, (
            self.predictor_pass,
            self.talker_pass,
        )
        if "one-launch" in (self.predictor_pass, self.talker_pass) and not self._own_one_launch():
            log.warning("another engine on %s runs one-launch passes: this one runs its passes as layers",
                        batch.device)  # fmt: skip
            self.predictor_pass = self.talker_pass = "layers"
        talker = batch.talker
        cp = talker.code_predictor
        self.talker = PackedDecoder(
            talker.model, talker.rotary, weights=weights, stacked=self.talker_pass == "one-launch"
        )
        stacked = self.predictor_pass == "one-launch"
        self.predictor = PackedDecoder(cp.model, cp.rotary, weights=weights, stacked=stacked)
        self.talker_norm = talker.model.norm  # its output is the hidden state the next frame starts from
        proj = cp.small_to_mtp_projection
        self.proj_w = proj.weight.detach() if hasattr(proj, "weight") else None
        self.proj_b = proj.bias.detach() if hasattr(proj, "weight") and proj.bias is not None else None
        if self.proj_w is not None and weights != "bf16":
            self.proj_w = quantize_weight(self.proj_w, weights)
        self.heads = [head.weight.detach() for head in cp.lm_head]
        self.tables = [emb.weight.detach() for emb in cp.model.codec_embedding]  # codebooks 1..15
        self.codec_table = talker.model.codec_embedding.weight.detach()
        self.codec_head = talker.codec_head.weight.detach()
        self.steps = cp.num_steps
        self.cp_width = cp.cfg.hidden_size
        self._index_cache: dict[int, dict[str, torch.Tensor]] = {}
        t = self.talker
        # the prefill's attention: FlashAttention-2 over the packed prompts where usable (kernels.attention)
        usable = flash_prefill_usable(batch.device, batch.dtype, t.heads, t.kv_heads, t.head_dim)
        self.prefill_attention = "flash-attention-2" if usable else "triton"

    def _own_one_launch(self) -> bool:
        """Claim this GPU's one-launch passes (see _ONE_LAUNCH_OWNER); the CPU's interpreter runs a launch's
        phases one after another, so there any number may."""
        dev = self.batch.device
        if dev.type != "cuda":
            return True
        return claim_one_launch(dev.index if dev.index is not None else torch.cuda.current_device(), self)

    @torch.no_grad()
    def prefill(self, first: int, prompts: list[Prompt], settings: list[SamplingConfig], seeds: list[int]):
        """`FrameBatch.prefill` for slots first, first+1, ... at once: every prompt's positions in one
        packed pass (each row attends to its own slot's columns up to its own), then each slot's first
        codebook-0 token. Returns the tokens (on the device)."""
        b = self.batch
        dev, n = b.device, len(prompts)
        lengths = [p.embeds.shape[0] for p in prompts]
        texts = [p.trailing.shape[0] for p in prompts]
        rows = slice(first, first + n)
        x = torch.cat([p.embeds.to(dev, b.dtype) for p in prompts])
        # every index the packed pass needs, made on the host and copied in one go (per-prompt device
        # ops and pageable copies made 64 prompts' admission host-bound: 62 ms for 7 ms of kernels)
        length, text = torch.tensor(lengths), torch.tensor(texts)
        ends = length.cumsum(0) - 1
        starts = torch.repeat_interleave(ends - length + 1, length)
        total = int(length.sum())
        flat_text = torch.cat([(first + i) * b.max_text + torch.arange(t) for i, t in enumerate(texts)])
        host = torch.cat(
            [
                torch.repeat_interleave(torch.arange(first, first + n), length),  # each row's slot
                torch.arange(total) - starts,  # each row's column
                ends,
                length,
                text,
                flat_text,  # each text row's place in the slots' text buffers
            ]
        )
        slot, col, ends, prompt_len, text_len, flat_text = to_device(host, torch.long, dev).split(
            [total, total, n, n, n, len(flat_text)]
        )
        # one split: a prompt's rows fill the GPU anyway, and kernels never compile per prompt length
        zero = torch.zeros_like(col)
        varlen = self._varlen(lengths)
        h = self.talker.forward(
            x, slot, col, col.expand(3, -1), zero, b.talker_caches, num_splits=1, eager=True, varlen=varlen
        )
        hidden = self.talker_norm(h[ends])
        params = SamplingParams.stack(settings, seeds, dev)
        for name in params.__dataclass_fields__:
            getattr(b.params, name)[rows] = getattr(params, name)
        logits = torch.empty(n, self.codec_head.shape[0], dtype=torch.float32, device=dev)
        linear(hidden, self.codec_head, out=logits)
        b.seen[rows] = False
        token = sample(
            logits,
            do_sample=params.do_sample,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            seeds=params.seeds,
            frame=0,
            codebook=0,
            seen=b.seen[rows],
            repetition_penalty=params.repetition_penalty,
            suppress=b.suppress,
            min_new_tokens=params.min_new_tokens,
            eos_id=b.eos_id,
        )
        b.hidden[rows] = hidden
        b.code0[rows] = token
        b.seen[rows].scatter_(1, token[:, None], True)
        b.col[rows] = prompt_len
        b.frame[rows] = 0
        # each prompt's text rows into its slot's text buffer: one copy for all
        trailing = torch.cat([p.trailing for p in prompts]).to(b.dtype)
        b.text.view(-1, b.text.shape[-1]).index_copy_(0, flat_text, trailing)
        b.text_len[rows] = text_len
        b.pad_embed.copy_(prompts[0].pad_embed.to(b.dtype))
        return token

    @torch.no_grad()
    def warm_prefill(self, max_rows: int) -> None:
        """Compile the prefill's kernels for every tile its row counts can take (packed prompts of 1 to
        `max_rows` rows), so a first request of a new size does not wait for Triton (~1 s a kernel).
        Writes garbage into slot 0's cache, which its next prefill overwrites."""
        b = self.batch
        rows = 1
        while True:
            m = min(rows, max_rows)
            col = torch.arange(m, device=b.device).clamp(max=b.max_len - 1)
            x = torch.zeros(m, b.hidden.shape[1], dtype=b.dtype, device=b.device)
            zero = torch.zeros_like(col)
            self.talker.forward(
                x, zero, col, col.expand(3, -1), zero, b.talker_caches, num_splits=1, eager=True,
                varlen=self._varlen([m]),
            )  # fmt: skip
            if m == max_rows or rows > 128:  # past the largest bucket every row count shares one tile
                break
            rows *= 2

    def _varlen(self, lengths: list[int]) -> tuple[torch.Tensor, int] | None:
        """FlashAttention's view of packed prompts (cumulative lengths, the longest), when it runs."""
        if self.prefill_attention != "flash-attention-2":
            return None
        cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return to_device(cu, torch.int32, self.batch.device), max(lengths)

    def _indices(self, n: int) -> dict[str, torch.Tensor]:
        """The constant index tensors of an n-row frame step, made once per n (each made per frame was a
        launch of its own in the frame's graph: ~25 of them). Never cached from inside a graph capture
        (their values would exist only once that graph replays); the runner's warm-up steps make them."""
        got = self._index_cache.get(n)
        if got is not None:
            return got
        dev = self.batch.device
        slots = torch.arange(n, device=dev)
        got = dict(
            slots=slots,
            zero=torch.zeros(n, dtype=torch.long, device=dev),
            slots2=slots.repeat_interleave(2),  # the predictor's first step: two rows per stream
            two=torch.arange(2, device=dev).repeat(n),
            zero2=torch.zeros(2 * n, dtype=torch.long, device=dev),
            # step k of 2..15 writes column k: one row of columns per step
            cols=torch.arange(2, self.steps + 1, device=dev)[:, None].expand(-1, n).contiguous(),
        )
        if not (dev.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            self._index_cache[n] = got
        return got

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj_w is None else linear(x, self.proj_w, self.proj_b)

    @torch.no_grad()
    def step(self, n: int) -> None:
        """Advance slots [0, n) by one frame (`FrameBatch.step`'s contract: device tensors only)."""
        b = self.batch
        rows = slice(0, n)
        p = b.params.rows(rows)
        frame = b.frame[rows]
        codes = b.out[rows, :-1]  # this frame's 16 codes land here
        codes[:, 0].copy_(b.code0[rows])
        acc = self._residual_codes(n, p, frame, codes)
        self._talker_step(n, p, frame, acc)

    def _residual_codes(self, n: int, p: SamplingParams, frame: torch.Tensor, codes: torch.Tensor):
        """The code predictor's 15 steps (codebooks 1-15 into `codes`); returns the talker's next input:
        the sum of the frame's 16 codebook embeddings plus its text embedding."""
        b = self.batch
        dev, dt = b.device, b.dtype
        rows = slice(0, n)
        idx = self._indices(n)
        slots, zero = idx["slots"], idx["zero"]
        width = b.hidden.shape[1]
        # step 1: rows (hidden, embedding of codebook 0) of each stream, at columns 0, 1
        first = torch.empty(n, 2, width, dtype=dt, device=dev)
        first[:, 0] = b.hidden[rows]
        first[:, 1] = self.codec_table[b.code0[rows]]
        h = self._predictor_pass(
            self._project(first.view(2 * n, width)), idx["slots2"], idx["two"], idx["zero2"]
        )
        acc = torch.empty(n, width, dtype=dt, device=dev)  # the running sum of the frame's embeddings
        text = self._text(n, frame)
        nxt = torch.empty(n, width, dtype=dt, device=dev)
        logits = torch.empty(n, self.heads[0].shape[0], dtype=torch.float32, device=dev)
        last = h.view(n, 2, -1)[:, 1]
        for k in range(1, self.steps + 1):
            head = self.heads[k - 1]
            linear(last, head, norm_weight=self.predictor.final_norm, eps=self.predictor.eps, out=logits)
            final = k == self.steps
            embed = Embed(
                self.tables[k - 1],
                out=None if final else nxt,
                acc=acc,
                start=k == 1,
                add=first[:, 1] if k == 1 else (text if final else None),
            )
            sample(
                logits,
                do_sample=p.sub_do_sample,
                temperature=p.sub_temperature,
                top_k=p.sub_top_k,
                top_p=p.sub_top_p,
                seeds=p.seeds,
                frame=frame,
                codebook=k,
                out=codes[:, k],
                embed=embed,
            )
            if not final:
                last = self._predictor_pass(self._project(nxt), slots, idx["cols"][k - 1], zero)
        return acc

    def _predictor_pass(self, x: torch.Tensor, slot, col, start) -> torch.Tensor:
        """The code predictor's layers over rows x (positions = columns): hidden states before its final
        norm. One launch where the setting and the row count allow it (x is then updated in place)."""
        caches = self.batch.predictor_caches
        rows, span = x.shape[0], caches[0].span
        if self.predictor_pass == "one-launch" and one_launch.supports(self.predictor, rows, span):
            # in place: a projection's output is fresh; without one, x is a buffer read again later
            x = x.contiguous() if self.proj_w is not None else x.clone()
            return one_launch.decoder_step(self.predictor, x, slot, col, col.expand(3, -1), start, caches)
        return self.predictor.forward(x, slot, col, col.expand(3, -1), start, caches)

    def _talker_step(self, n: int, p: SamplingParams, frame: torch.Tensor, acc: torch.Tensor) -> None:
        """The talker: the frame's embeddings plus its text in, the next codebook 0 out (and the books)."""
        b = self.batch
        dev = b.device
        rows = slice(0, n)
        idx = self._indices(n)
        slots, zero = idx["slots"], idx["zero"]
        col = b.col[rows].clamp(max=b.max_len - 1)  # padding slots keep counting: keep them in bounds
        if self.talker_pass == "one-launch" and one_launch.supports(self.talker, n, b.max_len):
            h = one_launch.decoder_step(
                self.talker, acc, slots, col, col.expand(3, -1), zero, b.talker_caches
            )
        else:
            h = self.talker.forward(acc, slots, col, col.expand(3, -1), zero, b.talker_caches)
        hidden = self.talker_norm(h)
        talker_logits = torch.empty(n, self.codec_head.shape[0], dtype=torch.float32, device=dev)
        linear(hidden, self.codec_head, out=talker_logits)
        token = sample(
            talker_logits,
            do_sample=p.do_sample,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            seeds=p.seeds,
            frame=frame + 1,
            codebook=0,
            seen=b.seen[rows],
            repetition_penalty=p.repetition_penalty,
            suppress=b.suppress,
            min_new_tokens=p.min_new_tokens,
            eos_id=b.eos_id,
            out=b.out[rows, -1],
        )
        b.hidden[rows].copy_(hidden)
        b.code0[rows].copy_(token)
        b.seen[rows].scatter_(1, token[:, None], True)
        b.col[rows].add_(1)
        b.frame[rows].add_(1)

    def _text(self, n: int, frame: torch.Tensor) -> torch.Tensor:
        """Each stream's text embedding for this frame: its next text token, or tts_pad once it ran out."""
        b = self.batch
        text = b.text[torch.arange(n, device=b.device), frame.clamp(max=b.max_text - 1)]
        return torch.where((frame < b.text_len[:n])[:, None], text, b.pad_embed).contiguous()
