"""A Generation hands its frames to one consumer: in order, all of them, and woken once per chunk."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from utter_tts.engine.scheduler import EngineFault, Generation


def until(predicate, timeout=10.0):
    """Wait for a state (not for a time): fail only if it never comes."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "state never reached"
        time.sleep(0.001)


def frame(i: int) -> torch.Tensor:
    return torch.full((16,), i, dtype=torch.long)


def consume(it, got: list, errors: list):
    try:
        for codes in it:
            got.append(int(codes[0]))
    except Exception as e:
        errors.append(e)


def test_the_consumer_wakes_once_a_chunk_is_complete():
    g = Generation(job=None)
    got, errors = [], []
    t = threading.Thread(target=consume, args=(g.chunked(1, 4), got, errors))
    t.start()
    g._push(frame(0))
    until(lambda: got == [0] and g._need == 5)  # first chunk: one frame; now waiting for frames 1-4
    for i in (1, 2, 3):
        g._push(frame(i))
    # not woken: its condition (5 frames in all) is false, so even a spurious wakeup waits again
    assert got == [0] and t.is_alive()
    g._push(frame(4))
    until(lambda: got == [0, 1, 2, 3, 4] and g._need == 9)
    g._push(frame(5))
    g._finish()  # the end wakes it with a partial chunk
    t.join(10)
    assert got == [0, 1, 2, 3, 4, 5] and not errors


def test_a_late_consumer_gets_every_frame_and_keeps_the_chunk_boundaries():
    g = Generation(job=None)
    for i in range(6):
        g._push(frame(i))
    it = g.chunked(2, 3)
    assert [int(next(it)[0]) for _ in range(6)] == list(range(6))  # all there: no wait
    got, errors = [], []
    t = threading.Thread(target=consume, args=(it, got, errors))
    t.start()
    until(lambda: g._need == 8)  # boundaries 2, 5, 8, ...: the next one after the 6 frames taken
    g._push(frame(6))
    g._push(frame(7))
    until(lambda: got == [6, 7])
    g._finish()
    t.join(10)
    assert not errors


def test_an_error_reaches_the_consumer_after_the_frames_before_it():
    g = Generation(job=None)
    g._push(frame(0))
    g._finish(EngineFault("the model produced an invalid frame"))
    got = []
    with pytest.raises(EngineFault):
        for codes in g:
            got.append(int(codes[0]))
    assert got == [0]
    assert [int(c[0]) for c in g.codes] == [0]
