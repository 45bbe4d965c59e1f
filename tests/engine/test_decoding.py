"""An attached stream's frames are decoded on a shared clock and cut into the consumer's chunks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from utter_tts.engine.decoding import (
    AHEAD_S,
    CLOCK_FRAMES,
    FRAME_SECONDS,
    LONG_AHEAD_S,
    LONG_CLOCK_FRAMES,
    AudioStream,
)
from utter_tts.engine.scheduler import Generation

FRAME = 3  # samples per frame of the stand-in codec
NOW = 0.0  # long before any chunk was delivered (perf_counter is far past it): players far ahead


def stream(first: int, size: int) -> AudioStream:
    codec = SimpleNamespace(frame_samples=FRAME, chunk_frames=None, chunk_context=0)
    g = Generation(job=SimpleNamespace(ref_codes=None))
    return AudioStream(SimpleNamespace(codec=codec), g, first, size)


def push_frames(s: AudioStream, n: int) -> None:
    for _ in range(n):
        s.generation._push(torch.full((16,), len(s.generation.codes), dtype=torch.long))


def decode(s: AudioStream, push) -> list[int]:
    """Play the decoder: each frame's audio is its index, FRAME times; returns the frames pushed."""
    codes, kept = push
    frames = [int(c[0]) for c in codes]
    if kept:
        s.deliver(torch.tensor(np.repeat(frames, FRAME), dtype=torch.float32))
    return frames


def test_first_chunk_at_once_then_frames_on_the_clock():
    s = stream(first=1, size=4)
    assert s.next_push(True, NOW) is None  # no frame yet
    push_frames(s, 1)
    assert decode(s, s.next_push(False, NOW)) == [0]  # first audio: not waiting for the clock
    assert [c[0] for c in s.chunks] == [0]
    push_frames(s, 2)
    assert s.next_push(False, NOW) is None  # 2 waiting frames wait for the clock
    assert decode(s, s.next_push(True, NOW)) == [1, 2]  # a tick: all waiting frames, one push
    assert len(s.chunks) == 1  # chunk 2 (frames 1-4) is not complete yet
    push_frames(s, CLOCK_FRAMES)  # more than a clock's worth waiting: pushed without a tick
    assert decode(s, s.next_push(False, NOW)) == [3, 4, 5, 6]
    assert [list(c[::FRAME]) for c in s.chunks] == [[0], [1, 2, 3, 4]]
    push_frames(s, 1)
    s.generation._finish()
    # while other streams generate, the end waits for the clock ...
    assert s.next_push(False, NOW, ticking=True) is None and not s.ended
    # ... and joins the others' pass: padded to the clock's length with its last frame, audio dropped
    assert decode(s, s.next_push(True, NOW, ticking=True)) == [7] * CLOCK_FRAMES
    assert s.next_push(False, NOW) is None and s.ended
    assert [list(c[::FRAME]) for c in s.chunks] == [[0], [1, 2, 3, 4], [5, 6, 7]]  # the rest, at the end


def test_the_last_stream_to_end_does_not_wait_for_a_clock_that_stopped():
    s = stream(first=1, size=4)
    push_frames(s, 3)
    decode(s, s.next_push(False, NOW))
    s.generation._finish()
    assert decode(s, s.next_push(False, NOW, ticking=False)) == [1, 2]  # nothing else runs: at once
    assert s.next_push(False, NOW) is None and s.ended
    assert [list(c[::FRAME]) for c in s.chunks] == [[0], [1, 2]]


def test_a_failed_generation_ends_its_stream_after_the_complete_chunks():
    s = stream(first=2, size=2)
    push_frames(s, 3)
    decode(s, s.next_push(False, NOW))
    decode(s, s.next_push(True, NOW))
    s.generation._finish(RuntimeError("boom"))
    assert s.next_push(True, NOW) is None and s.ended
    got = []
    try:
        for chunk in s:
            got.append(list(chunk[::FRAME]))
    except RuntimeError as e:
        assert str(e) == "boom"
    else:
        raise AssertionError("the generation's error was not raised")
    assert got == [[0, 1]]  # frame 2 was decoded, but its chunk never completed: dropped, as one-shot


def test_a_stream_close_to_running_dry_decodes_each_chunk_at_once():
    """Until its audio runs AHEAD_S ahead of a player started at the first chunk, a stream's complete
    chunks are decoded without waiting for the clock; then it waits for the clock again."""
    s = stream(first=1, size=2)
    push_frames(s, 1)
    decode(s, s.next_push(False, NOW))
    start = s.first_at  # the player starts here
    push_frames(s, 1)
    assert s.next_push(False, start) is None  # chunk 2 (frames 1-2) not complete yet
    push_frames(s, 1)
    assert decode(s, s.next_push(False, start)) == [1, 2]  # 80 ms ahead: at once
    push_frames(s, 2)
    assert decode(s, s.next_push(False, start)) == [3, 4]  # 240 ms ahead: still at once
    assert s.ahead(start) == 5 * FRAME_SECONDS > AHEAD_S
    push_frames(s, 2)
    assert s.next_push(False, start) is None  # 400 ms ahead: waits for the clock
    later = start + 5 * FRAME_SECONDS - AHEAD_S + 0.01  # the player caught up to within AHEAD_S
    assert decode(s, s.next_push(False, later)) == [5, 6]


def test_a_stream_far_ahead_decodes_on_every_other_tick_twice_the_frames():
    """Given the clock's tick count (the batcher's rounds), a stream LONG_AHEAD_S ahead of its player
    pushes on even ticks only, up to LONG_CLOCK_FRAMES frames, and its end is padded to that length; a
    stream less far ahead keeps the 4-frame clock."""
    s = stream(first=1, size=4)
    push_frames(s, 1)
    decode(s, s.next_push(False, NOW))
    start = s.first_at
    push_frames(s, CLOCK_FRAMES)
    near = start + 0.0  # 0.08 s ahead: the plain clock on any tick
    assert decode(s, s.next_push(True, near, True, tick=1)) == [1, 2, 3, 4]
    push_frames(s, CLOCK_FRAMES)
    far = start - LONG_AHEAD_S  # the player is LONG_AHEAD_S + 0.4 s behind the audio
    assert s.ahead(far) >= LONG_AHEAD_S
    assert s.next_push(True, far, True, tick=3) is None  # an odd tick: it waits
    assert s.next_push(False, far, True, tick=3) is None  # 4 waiting: not a long clock's worth
    push_frames(s, CLOCK_FRAMES)
    assert decode(s, s.next_push(True, far, True, tick=4)) == list(range(5, 13))  # 8 frames, one push
    push_frames(s, 3)
    s.generation._finish()
    assert s.next_push(True, far, True, tick=5) is None  # the end waits for the long tick too
    assert decode(s, s.next_push(True, far, True, tick=6)) == [13, 14, 15] + [15] * (LONG_CLOCK_FRAMES - 3)
    assert s.next_push(False, far) is None and s.ended
    frames = [f for c in s.chunks for f in c[::FRAME]]
    assert frames == list(range(16))  # the padding's audio dropped
