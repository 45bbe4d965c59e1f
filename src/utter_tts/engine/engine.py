"""The fast engine's face: submit requests, get audio, stream audio, synthesize whole documents."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from utter_tts.api import TTS
from utter_tts.engine.decoding import DecodeBatcher
from utter_tts.engine.runner import FrameRunner
from utter_tts.engine.scheduler import Scheduler, Stream
from utter_tts.engine.streaming import audio_chunks, check_chunk_sizes
from utter_tts.engine.text import split_sentences
from utter_tts.errors import InvalidInput
from utter_tts.request import Request

log = logging.getLogger(__name__)

SENTENCE_GAP_SECONDS = 0.12  # pause between the sentences of a document
EDGE_FADE_SECONDS = 0.005  # fade at sentence edges so joins never click


class Engine:
    """Continuous batching over one loaded model (CUDA graphs on the GPU, eager elsewhere).

    >>> engine = Engine(TTS.from_pretrained(path), max_streams=16)
    >>> audio = engine.generate([Request("Hello.", "clone", voice=voice)])[0]
    >>> for chunk in engine.stream(Request("Hello.", "clone", voice=voice)): ...
    """

    def __init__(
        self,
        tts: TTS,
        max_streams: int = 16,
        max_frames: int = 2048,
        max_prompt: int = 1024,
        max_text_tokens: int = 1024,
        max_queue: int = 256,
        use_graphs: bool | None = None,
    ):
        self.tts = tts
        self.runner = FrameRunner(
            tts.talker,
            tts.config.talker.codec_eos_token_id,
            max_slots=max_streams,
            max_prompt=max_prompt,
            max_frames=max_frames,
            max_text=max_text_tokens,
            use_graphs=use_graphs,
        )
        self.scheduler = Scheduler(self.runner, max_queue=max_queue)
        self.decoding = DecodeBatcher(tts.codec, max_batch=max(1, max_streams))
        log.info(
            "engine ready: %d streams x %d frames, graphs %s, attention %s",
            max_streams,
            max_frames,
            self.runner.use_graphs,
            attention_backend(tts.device),
        )

    def warmup(self, spans: tuple[int, ...] = (256,)) -> int:
        """Capture CUDA graphs for every batch size up front (first requests then pay no capture)."""
        with self.scheduler.lock:  # the scheduler thread is idle while we hold its lock and nothing waits
            if self.scheduler.live or self.scheduler.pending:
                raise RuntimeError("warm up before serving requests")
            return self.runner.warmup(spans)

    @property
    def sample_rate(self) -> int:
        return self.tts.sample_rate

    def close(self) -> None:
        self.scheduler.close()
        self.decoding.close()

    # ---- requests ----------------------------------------------------------------------------------
    def submit(self, request: Request) -> tuple[Stream, torch.Tensor | None]:
        """Start one request; returns its stream of codes and the reference codes (ICL voices) that
        decoding needs as left context."""
        [(req, prompt, sampling)] = self.tts.prepare_each([request])
        sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, self.runner.max_frames + 1))
        try:
            stream = self.scheduler.submit(prompt, sampling, req.seed)
        except ValueError as e:  # the prompt does not fit the engine's static shapes
            raise InvalidInput(str(e), param="input", code="too_long") from None
        return stream, prompt.ref_codes

    def generate_codes(self, requests: Sequence[Request]) -> list[torch.Tensor]:
        streams = [self.submit(r)[0] for r in requests]
        return [s.result() for s in streams]

    def generate(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Audio for each request; all run concurrently."""
        started = [self.submit(r) for r in requests]
        return [self.tts.decode(s.result(), ref) for s, ref in started]

    def stream(
        self, request: Request, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> Iterator[np.ndarray]:
        """Audio chunks as frames are generated: the first after `first_chunk_frames` frames, then every
        `chunk_frames`. Closing the iterator early cancels the request and frees its slot."""
        check_chunk_sizes(chunk_frames, first_chunk_frames)
        stream, ref = self.submit(request)
        return self.audio(stream, ref, chunk_frames, first_chunk_frames)

    def audio(
        self, stream: Stream, ref: torch.Tensor | None, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> Iterator[np.ndarray]:
        """Audio chunks of a submitted stream (see `stream`); decoding is batched with other streams'."""
        try:
            decoder = self.decoding.decoder()
            yield from audio_chunks(stream, decoder, ref, chunk_frames, first_chunk_frames)
        finally:
            stream.cancel()  # no-op when finished; frees the slot when the consumer walked away

    async def astream(
        self, request: Request, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> AsyncIterator[np.ndarray]:
        """`stream` for asyncio: decoding runs in a worker thread, the event loop stays free."""
        chunks = self.stream(request, chunk_frames, first_chunk_frames)
        end = object()
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, end)
                if chunk is end:
                    return
                yield chunk
        finally:
            chunks.close()

    # ---- documents -----------------------------------------------------------------------------------
    def synthesize_document(self, request: Request, max_chars: int = 300) -> np.ndarray:
        """Any length of text: split at sentences, all sentences generated concurrently with the same
        voice prompt (seeds derived from the request's), joined with short faded pauses."""
        pieces = split_sentences(request.text, max_chars)
        if not pieces:
            raise InvalidInput("text is empty", param="text", code="invalid_text")
        base_seed = request.seed
        reqs = [
            replace(request, text=p, seed=None if base_seed is None else base_seed + i)
            for i, p in enumerate(pieces)
        ]
        return join_sentences(self.generate(reqs), self.sample_rate)


def join_sentences(wavs: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    fade = int(EDGE_FADE_SECONDS * sample_rate)
    gap = np.zeros(int(SENTENCE_GAP_SECONDS * sample_rate), dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    out = []
    for i, w in enumerate(wavs):
        w = w.astype(np.float32, copy=True)
        if len(w) > 2 * fade:
            w[:fade] *= ramp
            w[-fade:] *= ramp[::-1]
        if i:
            out.append(gap)
        out.append(w)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@functools.lru_cache(maxsize=8)  # asked per /health and model-info call; the answer never changes
def attention_backend(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """Which attention kernel runs: PyTorch SDPA over the masked static cache, and the kernel SDPA picks
    for a decode step's shapes on this GPU (on an H100 the profile shows cuDNN's; the flash-attn package
    is not used by the engine)."""
    if device.type != "cuda":
        return "sdpa (cpu)"
    names = {0: "math", 1: "flash", 2: "memory-efficient", 3: "cuDNN"}  # torch.nn.attention.SDPBackend
    try:
        q = torch.zeros(1, 8, 2, 128, device=device, dtype=dtype)
        k = torch.zeros(1, 8, 256, 128, device=device, dtype=dtype)
        mask = torch.ones(1, 1, 2, 256, dtype=torch.bool, device=device)
        choice = int(torch._fused_sdp_choice(q, k, k, mask, 0.0, False))
        return f"sdpa ({names.get(choice, str(choice))} kernel, masked static cache)"
    except Exception:  # a private helper: if it moves, say less rather than fail
        return "sdpa (masked static cache)"
