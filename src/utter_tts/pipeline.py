"""The synthesis pipeline of one checkpoint: validate -> prompt -> frame budget -> frames -> audio.

Everything between a `Request` and audio that does not depend on how requests are scheduled lives here,
once: loading, voices, the checks, the prompt, the frame budget (the one tokens-to-frames rule), the
plain frame loop over `FrameBatch` (the same frame step the engine replays), decoding and streaming.
The engine (`utter_tts.engine`) runs prepared requests of a pipeline concurrently; `utter_tts.api.TTS` is
the facade over both.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from utter_tts.codec.speech_tokenizer import SpeechTokenizer
from utter_tts.device import CAPTURE_LOCK, to_host
from utter_tts.errors import InvalidInput, UnsupportedForModel
from utter_tts.model.checkpoint import Checkpoint, load_strict, load_talker, read_safetensors
from utter_tts.model.config import SamplingConfig, TTSConfig
from utter_tts.model.denormals import flush_denormals, flush_each
from utter_tts.model.frame import FrameBatch, Trace
from utter_tts.model.prompt import (
    Prompt,
    PromptPlan,
    VoiceSpec,
    make_prompts,
    open_text_missing,
    plan_prompt,
    trailing_ids,
)
from utter_tts.model.speaker_encoder import SpeakerEncoder, speaker_embedding
from utter_tts.model.text_feed import ROLE_IDS, TextFeed
from utter_tts.request import MAX_TEXT_CHARS, Request, validate
from utter_tts.textcheck import check_text
from utter_tts.voices.voice import Voice

log = logging.getLogger(__name__)

# Reference clips: long enough to carry a voice, short enough to keep the ICL prompt small.
REF_MIN_SECONDS = 1.0
REF_MAX_SECONDS = 30.0
# Frames per text token: speech runs at 2-6 tokens/s and the codec at 12.5 frames/s, so 8 frames a
# token is twice the slowest reading; the constant covers short texts and trailing silence.
FRAMES_PER_TOKEN = 8
FRAMES_BASE = 25
# The most text rows one generation whose text is still arriving takes (its frames' static text rows): a
# longer text goes on in a new generation (the WebSocket's sessions roll over at a sentence end).
LIVE_TEXT_ROWS = 1024

AudioInput = Any  # path | bytes | (np.ndarray, sample_rate)


def frame_cap(n_text_tokens: int) -> int:
    """Most frames a text of this many tokens may take: a missing end token cannot run away."""
    return FRAMES_BASE + FRAMES_PER_TOKEN * n_text_tokens


def frame_budget(sampling: SamplingConfig, n_text_tokens: int, limit: int | None = None) -> int:
    """The frames a request may make, the one place they are counted. `max_new_tokens` counts codebook-0
    tokens as the official `generate` does, and the token sampled last gets no residual codes, so a
    request makes at most max_new_tokens - 1 frames; at most `frame_cap` of its text (unless
    min_new_tokens asks for more); at most `limit` (an engine's static caches, a deployment's cap)."""
    frames = min(sampling.max_new_tokens - 1, max(sampling.min_new_tokens - 1, frame_cap(n_text_tokens)))
    return max(0, frames if limit is None else min(frames, limit))


@dataclass
class LiveText:
    """The text of a generation still being written (dual-track streaming), as the frames need it: the
    prompt once enough of it is final, then one token a frame as they become final, then the end token.
    The rows it hands out are always those of the whole text's streaming-text plan, so the codes equal
    those of the whole text given at once (a frame that needs a token not yet final waits for it)."""

    feed: TextFeed
    cfg: TTSConfig
    language: str
    voice: VoiceSpec
    ends: tuple[list[int], list[int]]  # the template's ids before the role's and after the text's
    started: bool = False  # its prompt is planned (and the text it holds handed out)
    sent: int = 0  # trailing rows handed to the frames so far
    complete: bool = False  # the text is closed and every row (its end token too) handed out
    max_rows: int = LIVE_TEXT_ROWS  # the frames' static text rows (an engine's may be fewer)
    version: int = -1  # the feed's version last planned from (the engine asks every frame)

    def plan(self) -> PromptPlan | None:
        """The prompt's plan from the text final so far (closed: the whole text's), or None while its
        prompt still needs more of it. A closed empty text raises InvalidInput."""
        ids, closed = self.feed.snapshot()
        if closed:
            check_text(self.feed.text, "text")  # what a whole text must be: not empty or blank
        elif len(ids) < ROLE_IDS:
            return None
        head, tail = self.ends
        plan = plan_prompt(self.cfg, head + ids + tail, self.language, self.voice, False, not closed)
        return None if plan.text_open and open_text_missing(plan) else plan

    def more(self, plan: PromptPlan) -> list[int]:
        """The trailing ids of `plan` not handed out yet (marked handed out)."""
        ids = trailing_ids(self.cfg, plan)[self.sent :]
        if self.sent + len(ids) > self.max_rows:
            raise InvalidInput(
                f"a text still arriving may take {self.max_rows} tokens in one generation; start a new one",
                param="text",
                code="text_too_long",
            )
        self.sent += len(ids)
        self.complete = not plan.text_open
        return ids


@dataclass
class Prepared:
    """A request checked and ready to run: its prompt (planned: checked and counted; its embeddings made
    at first use), sampling settings and frame budget."""

    request: Request  # validated, seed drawn
    plan: PromptPlan
    sampling: SamplingConfig
    frames: int  # the most frames it may make (`frame_budget`)
    make: Callable[[list[PromptPlan]], list[Prompt]] = field(repr=False, compare=False)  # plans' prompts
    _prompt: Prompt | None = field(default=None, repr=False, compare=False)
    live: LiveText | None = field(default=None, repr=False, compare=False)  # text still arriving
    limit: int | None = None  # the caller's frame limit (a live text's budget is counted again at its end)

    def start(self) -> bool:
        """For a live text: plan the prompt from the text final so far, if that is enough (True; always
        True for a whole text). Its rows beyond the prompt then come from `more_text`."""
        if self.live is None or self.live.started:
            return True
        self.live.version = self.live.feed.version  # read before the text it plans from
        plan = self.live.plan()
        if plan is None:
            return False
        self.plan = plan
        self.live.sent = len(trailing_ids(self.live.cfg, plan))  # the prompt's `trailing`
        self.live.complete, self.live.started = not plan.text_open, True
        self._recount()
        return True

    def more_text(self) -> list[int]:
        """A live text's ids for the frames beyond those handed out, as far as they are final (the end
        token once the text is closed); [] for a whole text."""
        if self.live is None or self.live.complete or self.live.feed.version == self.live.version:
            return []
        self.live.version = self.live.feed.version
        ids = self.live.more(self.live.plan())
        self._recount()
        return ids

    def has_text_for(self, frame: int) -> bool:
        """Whether frame `frame` (0-based) of this generation can be made: its text token is final."""
        return self.live is None or self.live.complete or frame < self.live.sent

    def waits_for_text(self, frame: int) -> bool:
        """Frame `frame` cannot be made yet, and no text came since the last look (`more_text`)."""
        return not self.has_text_for(frame) and self.live.feed.version == self.live.version

    def _recount(self) -> None:
        # a closed text's frame budget, as the whole text's would be; an open one's cannot be less
        if self.live.complete:
            self.frames = frame_budget(self.sampling, self.plan.text_tokens, self.limit)

    @property
    def prompt(self) -> Prompt:
        """The prompt's embeddings, made at the first call on the calling thread's current stream (or
        by `make_prompts` with other jobs'). Not thread-safe: one thread uses a job."""
        if self._prompt is None:
            self._prompt = self.make([self.plan])[0]
        return self._prompt

    @property
    def ref_codes(self) -> torch.Tensor | None:
        """Codes of an ICL voice's reference: the left context its audio is decoded with."""
        return self.plan.ref_codes


def make_job_prompts(jobs: Sequence[Prepared]) -> list[BaseException | None]:
    """Make the prompts of jobs that have none yet, together: one batched pass per pipeline (the engine's
    admission makes a burst's prompts on its own thread, not on 64 callers' threads contending for the
    GIL). A batch that fails is made again job by job, so a failure is its own job's only. Returns each
    job's error, None where its prompt is made."""
    errors: list[BaseException | None] = [None] * len(jobs)
    groups: dict[Callable, list[int]] = {}
    for i, job in enumerate(jobs):
        if job._prompt is None:
            groups.setdefault(job.make, []).append(i)
    for make, idx in groups.items():
        try:
            made = make([jobs[i].plan for i in idx]) if len(idx) > 1 else None
        except Exception:
            made = None
        for k, i in enumerate(idx):
            try:
                jobs[i]._prompt = made[k] if made is not None else jobs[i].prompt
            except Exception as e:
                errors[i] = e
    return errors


def _flushing_denormals(method):
    """Run a pipeline method with denormals flushed on the CPU (see model/denormals.py)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with flush_denormals(self.device):
            return method(self, *args, **kwargs)

    return wrapper


class Pipeline:
    """One loaded checkpoint: its talker, codec, speaker encoder (Base), tokenizer and defaults. Every
    call builds its own state, so one pipeline serves many threads at once."""

    def __init__(
        self,
        ckpt: Checkpoint,
        talker,
        codec: SpeechTokenizer,
        speaker_encoder: SpeakerEncoder | None,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.ckpt = ckpt
        self.config: TTSConfig = ckpt.config
        self.tokenizer = ckpt.tokenizer
        self.defaults: SamplingConfig = ckpt.sampling  # generation_config.json
        self.talker = talker
        self.codec = codec
        self.speaker_encoder = speaker_encoder
        self.device = device
        self.dtype = dtype
        self.eos_id = self.config.talker.codec_eos_token_id

    @classmethod
    def load(cls, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> Pipeline:
        """Load the weights of an opened checkpoint (downloading them if it was opened without) on
        `device` in `dtype`; the codec runs in float32, as the official does."""
        ckpt = ckpt.with_weights()
        talker = load_talker(ckpt, device, dtype)
        codec = SpeechTokenizer.from_dir(ckpt.folder / "speech_tokenizer", device=device, dtype=torch.float32)
        spk = None
        if ckpt.config.tts_model_type == "base":
            spk = SpeakerEncoder(ckpt.config.speaker_encoder)
            load_strict(spk, read_safetensors(ckpt.folder, "speaker_encoder."), "speaker_encoder")
            spk = spk.to(device=device, dtype=dtype).eval()
        log.info(
            "loaded %s (%s, %s) on %s in %s",
            ckpt.folder,
            ckpt.config.tts_model_type,
            ckpt.config.tts_model_size,
            device,
            str(dtype).removeprefix("torch."),
        )
        return cls(ckpt, talker, codec, spk, device, dtype)

    @property
    def model_type(self) -> str:
        return self.config.tts_model_type

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # ---- voices ------------------------------------------------------------------------------------
    @_flushing_denormals
    @torch.inference_mode()
    def create_voice(self, ref_audio: AudioInput, ref_text: str | None = None) -> Voice:
        """A reusable clone prompt from reference audio (path, bytes of any common format, or
        (array, sample_rate)). With `ref_text` (the words spoken in the clip) the voice uses the
        in-context mode, which clones better; without it, only the speaker embedding is used."""
        if self.model_type != "base":
            raise UnsupportedForModel(
                f"voices are made with a Base checkpoint; this one is {self.model_type}", param="ref_audio"
            )
        ref_text = check_ref_text(ref_text)
        wav = load_reference(ref_audio, self.sample_rate)
        wav_t = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        with CAPTURE_LOCK:  # cuDNN may search algorithms: never beside a graph capture
            emb = speaker_embedding(self.speaker_encoder, wav_t).float().cpu()
        codes = self.codec.encode(wav_t).cpu() if ref_text else None
        meta = {
            "model_size": self.config.tts_model_size,
            "ref_seconds": round(len(wav) / self.sample_rate, 3),
        }
        return Voice(speaker_embedding=emb, ref_codes=codes, ref_text=ref_text, meta=meta)

    # ---- requests ----------------------------------------------------------------------------------
    def prepare(self, request: Request, limit: int | None = None, feed: TextFeed | None = None) -> Prepared:
        """Check a request against this checkpoint (seed drawn when unset), plan its prompt (its
        embeddings are made at first use: `Prepared.prompt`) and give it its frame budget (at most
        `limit` frames, when the caller has a limit). With a `feed`, the text arrives through it
        (dual-track streaming; `request.text` is ''): see `Prepared.start`."""
        req, sampling = validate(request, self.config, self.defaults, live=feed is not None)
        if feed is None:
            plan = self.plan_prompt(req)
            # the text counted from its prompt ids: a second encode was a third of a request's planning
            frames = frame_budget(sampling, plan.text_tokens, limit)
            return Prepared(req, plan, sampling, frames, self.make_prompts, limit=limit)
        template = self.tokenizer.assistant_text("")
        # an empty text's template: <|im_start|>, the role's ids, then the closing ones
        ends = (template[:1], template[1 + ROLE_IDS :])
        live = LiveText(feed, self.config, req.language, self.voice_spec(req), ends)
        # until the prompt is made: the rows of an empty text, the frames of the longest one
        plan = plan_prompt(self.config, template, req.language, live.voice, False, text_open=True)
        frames = frame_budget(sampling, LIVE_TEXT_ROWS, limit)
        return Prepared(req, plan, sampling, frames, self.make_prompts, live=live, limit=limit)

    def make_prompts(self, plans: list[PromptPlan]) -> list[Prompt]:
        return make_prompts(self.talker, self.config, plans)

    def plan_prompt(self, req: Request) -> PromptPlan:
        # the official defaults: text fed frame by frame when cloning, all in the prompt otherwise
        text_in_prompt = req.non_streaming_mode if req.non_streaming_mode is not None else req.mode != "clone"
        spec = self.voice_spec(req)
        return plan_prompt(
            self.config, self.tokenizer.assistant_text(req.text), req.language, spec, text_in_prompt
        )

    def voice_spec(self, req: Request) -> VoiceSpec:
        """The voice part of a validated request's prompt (clone, design or preset)."""
        tok = self.tokenizer
        spec = VoiceSpec()
        if req.mode == "clone":
            voice = req.voice
            spec.speaker_embedding = voice.speaker_embedding  # to the device when the prompt is made
            if voice.mode == "icl":
                spec.ref_codes = voice.ref_codes
                spec.ref_text_ids = tok.ref_text(voice.ref_text)[3:-2]
        elif req.mode == "design":
            spec.instruct_ids = tok.instruct_text(req.instruct)
        else:
            spec.speaker = req.speaker
            if req.instruct:
                spec.instruct_ids = tok.instruct_text(req.instruct)
        return spec

    # ---- the plain loop ----------------------------------------------------------------------------
    def frames(
        self, jobs: Sequence[Prepared], trace: Trace | None = None
    ) -> Iterator[list[torch.Tensor | None]]:
        """Frame by frame, each request's codes [16] (on the CPU), or None for a request that has ended.
        All requests run as one batch through the frame step until every one has ended."""
        for job in jobs:  # a text still arriving: its prompt needs its first final tokens
            if job.live is not None:
                job.live.feed.wait(job.start)
        batch = FrameBatch(
            self.talker,
            self.eos_id,
            slots=len(jobs),
            max_len=max(j.prompt.embeds.shape[0] + j.frames + 1 for j in jobs),
            max_text=max(1, max(LIVE_TEXT_ROWS if j.live else j.prompt.trailing.shape[0] for j in jobs)),
        )
        first_logits = Trace() if trace is not None else None
        tokens = [
            batch.prefill(i, j.prompt, j.sampling, j.request.seed, first_logits) for i, j in enumerate(jobs)
        ]
        if trace is not None:
            trace.talker_logits.append(torch.cat(first_logits.talker_logits))
        alive = [bool(t != self.eos_id) and j.frames > 0 for t, j in zip(tokens, jobs)]
        made = [0] * len(jobs)
        while any(alive):
            for i, job in enumerate(jobs):
                if alive[i] and job.live is not None:
                    self._wait_for_text(batch, i, job, made[i])
            batch.step(len(jobs), trace=trace)
            out = to_host(batch.out[: len(jobs)])
            frame = []
            for i, job in enumerate(jobs):
                frame.append(out[i, :-1] if alive[i] else None)
                if alive[i]:
                    made[i] += 1
                    alive[i] = int(out[i, -1]) != self.eos_id and made[i] < job.frames
            yield frame

    @staticmethod
    def _wait_for_text(batch: FrameBatch, slot: int, job: Prepared, frame: int) -> None:
        """Until frame `frame` of a live text's job has its token (the others in the batch wait too:
        the plain loop runs its jobs in step; the engine lets them go on)."""
        feed = job.live.feed
        while True:
            version = feed.version
            batch.append_text(slot, job.more_text())
            if job.has_text_for(frame):
                return
            feed.wait(lambda v=version: feed.version != v)

    @_flushing_denormals
    def generate_codes(self, jobs: Sequence[Prepared], trace: Trace | None = None) -> list[torch.Tensor]:
        """Codes [F, 16] per prepared request (the talker and code predictor only, no audio)."""
        rows: list[list[torch.Tensor]] = [[] for _ in jobs]
        for frame in self.frames(jobs, trace):
            for row, codes in zip(rows, frame):
                if codes is not None:
                    row.append(codes)
        width = self.config.talker.num_code_groups
        return [torch.stack(r) if r else torch.zeros(0, width, dtype=torch.long) for r in rows]

    @_flushing_denormals
    def decode(self, codes: torch.Tensor, ref_codes: torch.Tensor | None = None) -> np.ndarray:
        """Codes [F, 16] -> float32 audio. ICL voices decode with their reference codes as left context,
        whose share of the audio is then cut (the official rule)."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if ref_codes is None:
            return to_host(self.codec.decode(codes)).numpy()
        full = torch.cat([ref_codes.to(codes.device), codes])
        wav = to_host(self.codec.decode(full)).numpy()
        cut = int(ref_codes.shape[0] / max(full.shape[0], 1) * wav.shape[0])
        return wav[cut:]

    def synthesize(self, jobs: Sequence[Prepared]) -> list[np.ndarray]:
        """Audio for each prepared request, all run as one batch."""
        return [self.decode(codes, job.ref_codes) for codes, job in zip(self.generate_codes(jobs), jobs)]

    def stream(
        self, job: Prepared, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> Iterator[np.ndarray]:
        """float32 audio chunks of one prepared request as its frames are made (see `audio_chunks`)."""
        check_chunk_sizes(chunk_frames, first_chunk_frames)
        frames = (frame[0] for frame in self.frames([job]) if frame[0] is not None)
        chunks = audio_chunks(
            frames, self.codec.stream_decoder(), job.ref_codes, chunk_frames, first_chunk_frames
        )
        return flush_each(chunks, self.device)


def check_chunk_sizes(chunk_frames: int, first_chunk_frames: int) -> None:
    for name, value in (("chunk_frames", chunk_frames), ("first_chunk_frames", first_chunk_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be a positive integer, got {value!r}", param=name)


def audio_chunks(
    frames: Iterable[torch.Tensor],
    decoder,
    ref_codes: torch.Tensor | None,
    chunk_frames: int,
    first_chunk_frames: int,
) -> Iterator[np.ndarray]:
    """float32 chunks from frames ([16] codes each): the first after `first_chunk_frames` frames, then
    every `chunk_frames`. The decoder keeps exact left context, so the chunks concatenate to the
    one-shot decode. ICL voices first feed their reference codes (at the first frame), whose audio is the
    reference's.
    `decoder` is anything with the StreamingDecoder's `push` (the engine's batched one too)."""
    pending: list[torch.Tensor] = []
    want = first_chunk_frames
    for codes in frames:
        if ref_codes is not None:  # at the first frame: a request still waiting holds no decoder state
            decoder.push(ref_codes)
            ref_codes = None
        pending.append(codes)
        if len(pending) >= want:
            yield to_host(decoder.push(torch.stack(pending))).numpy()
            pending, want = [], chunk_frames
    if pending:
        yield to_host(decoder.push(torch.stack(pending))).numpy()


def check_ref_text(ref_text: Any) -> str | None:
    """A reference transcript: a string of at most MAX_TEXT_CHARS; blank means none (x-vector voice)."""
    if ref_text is None:
        return None
    ref_text = check_text(ref_text, "ref_text", MAX_TEXT_CHARS, allow_empty=True)
    return ref_text if ref_text.strip() else None


def load_reference(ref_audio: AudioInput, sample_rate: int) -> np.ndarray:
    """Reference audio (path, bytes of any common format, or (array, rate)) as float32 mono at
    `sample_rate`, checked: readable, not silent, REF_MIN_SECONDS to REF_MAX_SECONDS long."""
    from utter_tts.audio.io import load_audio

    return load_audio(
        ref_audio, sample_rate, min_seconds=REF_MIN_SECONDS, max_seconds=REF_MAX_SECONDS, param="ref_audio"
    )
