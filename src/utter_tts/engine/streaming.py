"""Streaming audio: feed new frames to the codec's incremental decoder and cut the audio into chunks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from utter_tts.engine.host import to_host
from utter_tts.errors import InvalidInput


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
    one-shot decode. ICL voices first feed their reference codes, whose audio is the reference's."""
    if ref_codes is not None:
        decoder.push(ref_codes)
    pending: list[torch.Tensor] = []
    want = first_chunk_frames
    for codes in frames:
        pending.append(codes)
        if len(pending) >= want:
            yield to_host(decoder.push(torch.stack(pending))).numpy()
            pending, want = [], chunk_frames
    if pending:
        yield to_host(decoder.push(torch.stack(pending))).numpy()
