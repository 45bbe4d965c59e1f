"""Flush-to-zero on the CPU: on while our work runs, back to the caller's mode afterwards, per thread."""

from __future__ import annotations

import threading

import pytest
import torch

from utter_tts.api import TTS
from utter_tts.model.denormals import flush_denormals, flush_each, flushing
from utter_tts.request import Request


def _supported() -> bool:
    """Whether this processor can flush (checked in a throwaway thread: the mode is per thread)."""
    result = []
    t = threading.Thread(target=lambda: result.append(torch.set_flush_denormal(True)))
    t.start()
    t.join()
    return result[0]


pytestmark = pytest.mark.skipif(not _supported(), reason="this processor cannot flush denormals")


@pytest.fixture(autouse=True)
def caller_mode_off():
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def test_flushing_reads_the_real_arithmetic():
    assert not flushing()
    torch.set_flush_denormal(True)
    assert flushing()


def test_scoped_and_restored_even_on_error():
    with flush_denormals("cpu"):
        assert flushing()
    assert not flushing()
    with pytest.raises(RuntimeError), flush_denormals("cpu"):
        assert flushing()
        raise RuntimeError("boom")
    assert not flushing()


def test_a_caller_that_flushes_keeps_flushing():
    torch.set_flush_denormal(True)
    with flush_denormals("cpu"):
        assert flushing()
    assert flushing()


def test_other_devices_and_threads_are_untouched():
    with flush_denormals("meta"):
        assert not flushing()
    # the mode is per thread: a thread already running keeps its own (new threads inherit their
    # creator's floating-point environment, so this one starts before the scope)
    seen, go = [], threading.Event()
    t = threading.Thread(target=lambda: (go.wait(5), seen.append(flushing())))
    t.start()
    with flush_denormals("cpu"):
        go.set()
        t.join()
        assert flushing()
    assert seen == [False]


def test_flush_each_flushes_the_work_not_the_caller():
    during, closed = [], []

    def work():
        try:
            for i in range(3):
                during.append(flushing())
                yield i
        finally:
            closed.append(True)

    items = flush_each(work(), "cpu")
    assert next(items) == 0 and not flushing()  # the caller holds the item in its own mode
    assert next(items) == 1 and not flushing()
    items.close()
    assert during == [True, True] and closed == [True]


def test_pipeline_work_is_flushed_and_the_caller_mode_restored(checkpoints, monkeypatch):
    tts = TTS.from_pretrained(checkpoints("custom_voice"), device="cpu", dtype="float32")
    pipeline = tts.pipeline
    seen: dict[str, list[bool]] = {"decode": [], "frames": []}
    decode, frames = pipeline.codec.decode, pipeline.frames

    def recording_decode(*args, **kwargs):
        seen["decode"].append(flushing())
        return decode(*args, **kwargs)

    def recording_frames(*args, **kwargs):
        for frame in frames(*args, **kwargs):
            seen["frames"].append(flushing())
            yield frame

    monkeypatch.setattr(pipeline.codec, "decode", recording_decode)
    monkeypatch.setattr(pipeline, "frames", recording_frames)
    audio, _ = tts.speak("Hi.", speaker="vivian", max_new_tokens=4)
    assert len(audio) > 0 and seen["decode"] == [True] and all(seen["frames"]) and seen["frames"]
    assert not flushing()

    seen["frames"].clear()
    request = Request("Hi.", "speak", "auto", speaker="vivian", sampling={"max_new_tokens": 4})
    chunks = tts.stream(request)
    first = next(chunks)
    assert len(first) > 0 and not flushing()
    list(chunks)
    assert seen["frames"] and all(seen["frames"]) and not flushing()
