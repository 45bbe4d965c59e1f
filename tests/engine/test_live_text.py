"""Dual-track streaming: a text fed in pieces while it is spoken gives, code for code, what the whole
text given at once gives in streaming-text mode (same seed), in every mode and however it is cut; the
plain loop and the engine alike."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.model.test_parity import TEXTS, reference_clip
from utter_tts.api import TTS
from utter_tts.model.text_feed import TextFeed
from utter_tts.request import Request

FRAMES = 10  # frames each generation makes (random weights never end on their own)
SAMPLING = dict(max_new_tokens=FRAMES + 1, min_new_tokens=FRAMES + 1)


@pytest.fixture(scope="module")
def models(checkpoints):
    return {
        kind: TTS.from_pretrained(checkpoints(kind, "tiny-1.7b"), device="cpu", dtype="float32").pipeline
        for kind in ("base", "voice_design", "custom_voice")
    }


@pytest.fixture(scope="module")
def voices(models):
    base = models["base"]
    ref = (reference_clip(1.2), 24000)
    return {"xvector": base.create_voice(ref), "icl": base.create_voice(ref, "A short reference line.")}


def _request(models, voices, mode: str, text: str, seed: int) -> tuple[object, Request]:
    common = dict(seed=seed, sampling=SAMPLING, non_streaming_mode=False)
    if mode in ("xvector", "icl"):
        return models["base"], Request(text, "clone", "english", voice=voices[mode], **common)
    if mode == "design":
        return models["voice_design"], Request(text, "design", instruct="A calm, low voice.", **common)
    instruct = "Very excited." if mode == "preset-instruct" else None
    return models["custom_voice"], Request(text, "speak", speaker="ryan", instruct=instruct, **common)


MODES = ["xvector", "icl", "design", "preset", "preset-instruct"]


def _pieces(text: str, cuts: list[int]) -> list[str]:
    edges = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(edges, edges[1:])]


def _feeding(feed: TextFeed, pieces: list[str], pause_s: float) -> threading.Thread:
    """Append the pieces from another thread, as an LLM's tokens would arrive, then close the text."""

    def run():
        for piece in pieces:
            time.sleep(pause_s)
            feed.append(piece)
        feed.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _live_codes(pipeline, request: Request, pieces: list[str], pause_s: float) -> torch.Tensor:
    feed = TextFeed(pipeline.tokenizer)
    job = pipeline.prepare(Request(**{**request.__dict__, "text": ""}), feed=feed)
    feeder = _feeding(feed, pieces, pause_s)
    codes = pipeline.generate_codes([job])[0]
    feeder.join()
    return codes


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=st.sampled_from(list(TEXTS.values())), cuts=st.lists(st.integers(0, 80), max_size=6))
def test_the_plain_loop_speaks_a_text_arriving_in_pieces_as_the_whole_text(models, voices, mode, text, cuts):
    pipeline, request = _request(models, voices, mode, text, seed=11)
    whole = pipeline.generate_codes([pipeline.prepare(request)])[0]
    assert whole.shape[0] == FRAMES
    assert torch.equal(_live_codes(pipeline, request, _pieces(text, cuts), 0.003), whole)


@pytest.fixture(scope="module")
def engines(models):
    from utter_tts.engine.engine import Engine

    made = {
        kind: Engine(p, max_streams=3, max_frames=24, max_prompt=96, max_text_tokens=64, kernels=False)
        for kind, p in models.items()
    }
    yield made
    for engine in made.values():
        engine.close()


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    text=st.sampled_from(list(TEXTS.values())),
    cuts=st.lists(st.integers(0, 80), max_size=8),
    pause_s=st.sampled_from([0.0, 0.02, 0.06]),
)
def test_the_engine_speaks_a_text_arriving_in_pieces_as_the_whole_text(
    models, voices, engines, mode, text, cuts, pause_s
):
    """Beside a whole-text stream, batched with it: both give the plain loop's codes for their texts."""
    pipeline, request = _request(models, voices, mode, text, seed=5)
    _, other = _request(models, voices, mode, TEXTS["german"], seed=6)
    want = pipeline.generate_codes([pipeline.prepare(request), pipeline.prepare(other)])
    engine = engines[pipeline.model_type]
    feed = TextFeed(pipeline.tokenizer)
    live = engine.submit(Request(**{**request.__dict__, "text": ""}), feed=feed)
    beside = engine.submit(other)
    feeder = _feeding(feed, _pieces(text, cuts), pause_s)
    got = [live.result(timeout=120), beside.result(timeout=120)]
    feeder.join()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_a_stream_waiting_for_its_text_lets_the_others_go_on(models, engines, monkeypatch):
    """Its first word only, until the stream beside it has made 4 frames: those frames ran with the
    waiting stream held (its state put back), and it still gives the whole text's codes."""
    pipeline = models["custom_voice"]
    engine = engines["custom_voice"]
    text = TEXTS["english"]
    request = Request(text, "speak", speaker="ryan", seed=3, sampling=SAMPLING, non_streaming_mode=False)
    other = Request(TEXTS["german"], "speak", speaker="vivian", seed=4, sampling=SAMPLING)
    want = pipeline.generate_codes([pipeline.prepare(request), pipeline.prepare(other)])
    held = []
    launch = engine.runner.launch
    monkeypatch.setattr(engine.runner, "launch", lambda n, hold=None: held.append(hold) or launch(n, hold))
    feed = TextFeed(pipeline.tokenizer)
    live = engine.submit(Request(**{**request.__dict__, "text": ""}), feed=feed)
    beside = engine.submit(other)
    feed.append(text[:6])  # "Hello ": the tokens of "Hello" are final, " there" may still grow
    body = len(feed.snapshot()[0]) - 2  # the text's own final tokens (after the role's two)
    deadline = time.monotonic() + 60
    while beside.frames < body + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    # the first token went into its prompt; a frame each for the others, then it waited
    assert beside.frames >= body + 4 and live.frames == body - 1
    feed.append(text[6:])
    feed.close()
    assert torch.equal(live.result(timeout=60), want[0]) and torch.equal(beside.result(timeout=60), want[1])
    assert sum(1 for hold in held if hold) >= 3


def test_a_text_closed_empty_fails_its_generation_alone(models, engines):
    from utter_tts.errors import InvalidInput

    pipeline = models["custom_voice"]
    feed = TextFeed(pipeline.tokenizer)
    g = engines["custom_voice"].submit(Request("", "speak", speaker="ryan", seed=1), feed=feed)
    feed.append("   ")
    feed.close()
    with pytest.raises(InvalidInput, match="empty"):
        g.result(timeout=60)


def test_tokens_fed_before_their_pre_token_ends_are_caught(models, monkeypatch):
    """The planted fault: the feed hands out every token of the text so far, the last word's too ("Hel"
    of "Hello"): the codes then differ from the whole text's, as the tests above would see."""
    from utter_tts.model.text_feed import final_ids

    pipeline = models["custom_voice"]
    text = TEXTS["english"]
    request = Request(text, "speak", speaker="ryan", seed=3, sampling=SAMPLING, non_streaming_mode=False)
    whole = pipeline.generate_codes([pipeline.prepare(request)])[0]
    assert torch.equal(_live_codes(pipeline, request, [text[:3], text[3:]], 0.2), whole)  # unfaulted
    snapshot = TextFeed.snapshot
    monkeypatch.setattr(
        TextFeed, "snapshot", lambda f: (final_ids(f.tokenizer, f.text, True), snapshot(f)[1])
    )
    assert not torch.equal(_live_codes(pipeline, request, [text[:3], text[3:]], 0.2), whole)
