"""The engine (continuous batching, streaming) gives exactly what the plain model gives."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import numpy as np
import pytest
import torch

from utter_tts.api import TTS
from utter_tts.audio.join import join_clips
from utter_tts.engine.engine import Engine
from utter_tts.engine.scheduler import Busy, Cancelled
from utter_tts.errors import InvalidInput
from utter_tts.pipeline import frame_cap
from utter_tts.request import Request
from utter_tts.text import split_sentences

from ..model.test_parity import TEXTS, reference_clip

GREEDY = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=24, min_new_tokens=24)
SAMPLED = dict(max_new_tokens=24, min_new_tokens=24)


@pytest.fixture(scope="module")
def tts(checkpoints):
    return TTS.from_pretrained(checkpoints("base", "tiny-1.7b"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def voices(tts):
    return (
        tts.create_voice((reference_clip(), 24000)),
        tts.create_voice((reference_clip(seed=1), 24000), ref_text="Some reference words."),
    )


@pytest.fixture
def engine(tts):
    eng = Engine(tts.pipeline, max_streams=3, max_frames=64, max_prompt=128, max_text_tokens=128, max_queue=4)
    yield eng
    eng.close()


def _requests(voices):
    xv, icl = voices
    return [
        Request(TEXTS["english"], "clone", "english", voice=xv, sampling=GREEDY),
        Request(TEXTS["german"], "clone", "german", voice=icl, sampling=SAMPLED, seed=11),
        Request(
            TEXTS["chinese"],
            "clone",
            "auto",
            voice=xv,
            seed=3,
            sampling={**SAMPLED, "max_new_tokens": 14, "min_new_tokens": 4, "temperature": 0.6},
        ),
        Request(TEXTS["french"], "clone", "french", voice=icl, sampling=GREEDY),
    ]


def test_batched_and_joining_mid_flight_equals_plain(tts, voices, engine):
    reqs = _requests(voices)
    plain = [tts.generate_codes([r])[0] for r in reqs]
    first = engine.submit(reqs[0])
    while first.frames < 5:  # the others join while the first is mid-flight
        time.sleep(0.01)
    later = [engine.submit(r) for r in reqs[1:]]  # 4 requests, 3 slots: the last waits for a slot
    got = [first.result(60)] + [s.result(60) for s in later]
    for a, b in zip(plain, got):
        assert torch.equal(a, b)
    assert min(len(set(a[:, 0].tolist())) for a in got) >= 8


def test_streamed_audio_equals_one_shot(tts, voices, engine):
    for req in _requests(voices)[:2]:  # x-vector and ICL (reference codes as left context)
        ref_codes = tts.pipeline.prepare(req).ref_codes
        one_shot = tts.decode(tts.generate_codes([req])[0], ref_codes)
        for first, chunk in ((1, 1), (2, 5), (3, 4)):
            chunks = list(engine.stream(req, chunk_frames=chunk, first_chunk_frames=first))
            assert len(chunks[0]) == first * 1920
            streamed = np.concatenate(chunks)
            assert len(streamed) == len(one_shot)
            assert np.abs(streamed - one_shot).max() <= 1e-5 * np.abs(one_shot).max()


def test_concurrent_streams_decode_in_batches(tts, voices, engine):
    """Three players streaming at once: the decoder takes their chunks itself, batched, and each stream's
    audio still equals its own one-shot decode. Batching is shown deterministically: the decoder is held
    until all three streams have their first frame; the two one-frame first chunks (x-vector voices) then
    run as one pass, the ICL voice's reference push (another length) as a second."""
    reqs = _requests(voices)[:3]
    want = []
    for req in reqs:
        want.append(tts.decode(tts.generate_codes([req])[0], tts.pipeline.prepare(req).ref_codes))
    got: list = [None] * 3
    batches_before = len(engine.decoding.passes)

    def play(i):
        got[i] = np.concatenate(list(engine.stream(reqs[i], chunk_frames=2, first_chunk_frames=1)))

    def all_due():
        streams = list(engine.decoding.streams)
        return len(streams) == 3 and all(s.generation.codes for s in streams)

    threads = [threading.Thread(target=play, args=(i,)) for i in range(3)]
    with engine.decoding.held():
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120  # liveness only: how long the frames take does not matter
        while not all_due():
            assert time.monotonic() < deadline, "the three streams never had their first frames"
            time.sleep(0.01)
    for t in threads:
        t.join()
    assert sorted(engine.decoding.passes[batches_before]) == [1, 2]
    for g, w in zip(got, want):
        assert len(g) == len(w)
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max()


def test_the_decoder_takes_chunks_without_the_consumer(tts, voices, engine):
    """The decoder's thread decodes a stream's chunks as its frames come, not when the consumer asks:
    after one chunk, a consumer that stops reading finds every other chunk decoded and queued at the
    generation's end; they still concatenate to the one-shot decode (ICL voice: reference pushed first)."""
    req = _requests(voices)[1]  # ICL, 23 frames
    want = tts.decode(tts.generate_codes([req])[0], tts.pipeline.prepare(req).ref_codes)
    gen = engine.submit(req)
    chunks = engine.audio(gen, chunk_frames=5, first_chunk_frames=2)
    got = [next(chunks)]
    stream = engine.decoding.streams[0]
    deadline = time.monotonic() + 120  # liveness only
    while not stream.ended:  # 2 + 4 x 5 + 1 frames: five more chunks, the last of one frame
        assert time.monotonic() < deadline, "the decoder did not finish the stream on its own"
        time.sleep(0.01)
    assert [len(c) for c in stream.chunks] == [5 * 1920] * 4 + [1920]
    while stream.decoder.slot is not None:  # decoded: its codec slot is free before the consumer is done
        assert time.monotonic() < deadline, "the ended stream kept its codec slot"
        time.sleep(0.01)
    got += list(chunks)
    assert engine.decoding.streams == []  # detached when the consumer finished
    streamed = np.concatenate(got)
    assert len(streamed) == len(want)
    assert np.abs(streamed - want).max() <= 1e-5 * np.abs(want).max()


def test_async_stream(voices, engine):
    req = _requests(voices)[0]

    async def collect():
        return [c async for c in engine.astream(req, chunk_frames=8)]

    chunks = asyncio.run(collect())
    assert sum(len(c) for c in chunks) == 23 * 1920


def test_cancel_frees_the_slot(voices, engine):
    long = dict(max_new_tokens=60, min_new_tokens=60)
    xv = voices[0]
    streams = [
        engine.submit(Request(TEXTS["english"], "clone", "english", voice=xv, sampling=long, seed=i))
        for i in range(4)
    ]
    while engine.scheduler.active < 3:
        time.sleep(0.01)
    assert engine.scheduler.queue_depth == 1  # three slots: the fourth waits
    streams[0].cancel()
    with pytest.raises(Cancelled):
        streams[0].result(30)
    waiting = streams[3]
    while waiting.frames == 0:  # it got the freed slot
        time.sleep(0.01)
    for s in streams[1:]:
        assert s.result(60).shape == (59, 16)
    assert engine.scheduler.active == 0


def test_abandoned_stream_iterator_cancels(voices, engine):
    req = Request(
        TEXTS["english"],
        "clone",
        "english",
        voice=voices[0],
        sampling=dict(max_new_tokens=60, min_new_tokens=60),
    )
    it = engine.stream(req, chunk_frames=2)
    next(it)
    it.close()  # the client went away
    deadline = time.time() + 30
    while engine.scheduler.active and time.time() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.active == 0


def test_limits(tts, voices, engine):
    xv = voices[0]
    with pytest.raises(InvalidInput) as e:  # the prompt does not fit the static shapes
        engine.submit(Request("word " * 400, "clone", "english", voice=xv))
    assert e.value.param == "input"
    long = dict(max_new_tokens=60, min_new_tokens=60)
    streams = []
    with pytest.raises(Busy):
        for i in range(20):
            streams.append(
                engine.submit(Request(TEXTS["english"], "clone", "english", voice=xv, sampling=long, seed=i))
            )
    assert 4 <= len(streams) <= 3 + 4  # the queue holds 4; up to 3 more may already run
    for s in streams:
        s.cancel()
    # max frames: a request asking for more than the engine holds is cut at its bound
    big = engine.submit(
        Request(
            TEXTS["english"],
            "clone",
            "english",
            voice=xv,
            sampling=dict(max_new_tokens=500, min_new_tokens=500),
        )
    )
    assert big.result(120).shape[0] == 64


def test_frame_cap_by_text_length(tts, voices):
    req = Request("Hi.", "clone", "english", voice=voices[0], sampling=dict(max_new_tokens=4000))
    assert tts.pipeline.prepare(req).frames == frame_cap(len(tts.pipeline.tokenizer.encode_plain("Hi.")))
    assert tts.pipeline.prepare(req, limit=7).frames == 7  # an engine's caches bound it too
    asked = Request("Hi.", "clone", "english", voice=voices[0], sampling=dict(max_new_tokens=6))
    assert tts.pipeline.prepare(asked).frames == 5  # the token sampled last gets no residual codes


def test_split_sentences():
    text = "First sentence. Second one!  Third?\n\nNew paragraph, with a clause; and more. 你好。世界！"
    assert split_sentences(text, max_chars=20) == [
        "First sentence.",
        "Second one! Third?",
        "New paragraph,",
        "with a clause; and",
        "more. 你好。世界！",
    ] or all(len(p) <= 20 for p in split_sentences(text, max_chars=20))
    pieces = split_sentences(text, max_chars=20)
    assert all(len(p) <= 20 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    assert split_sentences("x" * 50, max_chars=20) == ["x" * 20, "x" * 20, "x" * 10]
    assert split_sentences("   ") == []


def test_document(tts, voices, engine):
    doc = " ".join([TEXTS["english"]] * 3)
    req = Request(
        doc, "clone", "english", voice=voices[0], seed=5, sampling=dict(max_new_tokens=20, min_new_tokens=20)
    )
    audio = engine.synthesize_document(req, max_chars=60)
    pieces = split_sentences(doc, 60)
    assert len(pieces) == 3
    gap = int(0.12 * 24000)
    assert len(audio) == 3 * 19 * 1920 + 2 * gap
    again = engine.synthesize_document(req, max_chars=60)
    np.testing.assert_array_equal(audio, again)  # seeded: reproducible


def test_join_has_no_clicks():
    a = np.ones(2400, dtype=np.float32) * 0.5
    joined = join_clips([a, a], 24000)
    assert np.abs(np.diff(joined)).max() < 0.5 / 100  # faded edges: no step at the joins


def test_tts_served_by_its_engine(tts, voices):
    """A TTS made with an engine serves the plain API's calls through continuous batching, same audio."""
    req = _requests(voices)[1]
    plain = np.concatenate(list(tts.stream(req)))
    eng = Engine(tts.pipeline, max_streams=2, max_frames=64, max_prompt=128, max_text_tokens=128)
    served_tts = TTS(tts.pipeline, eng)
    try:
        served = np.concatenate(list(served_tts.stream(req)))
        batch = served_tts.synthesize([req, _requests(voices)[0]])
    finally:
        served_tts.close()
    assert np.abs(served - plain).max() <= 1e-5 * np.abs(plain).max()
    assert np.abs(batch[0] - plain).max() <= 1e-5 * np.abs(plain).max()
    assert eng.scheduler.frames_run > 0


def test_a_failing_push_fails_only_its_stream(tts):
    """One player's bad codes in a batch must not fail the other players' audio."""
    from utter_tts.engine.decoding import DecodeBatcher, _Job

    codec = tts.pipeline.codec
    batcher = DecodeBatcher(codec)
    try:
        codes = torch.randint(0, 2048, (2, 16))
        good, bad = batcher.decoder(), batcher.decoder()
        good.start()
        bad.start()
        good_job, bad_job = _Job(good, codes), _Job(bad, codes[:, :15])  # 15 codebooks: invalid
        batcher._serve([good_job, bad_job])  # one batch, as the thread would run it
        assert isinstance(bad_job.error, ValueError) and bad_job.done.is_set()
        assert good_job.error is None and good_job.done.is_set()
        assert torch.allclose(good_job.audio, codec.stream_decoder().push(codes), atol=1e-5)
    finally:
        batcher.close()


def test_non_finite_audio_fails_only_its_stream(tts, monkeypatch):
    """A pass whose audio holds inf/NaN for one stream (an fp16 overflow in the mixed codec on unusual
    weights) fails that stream with NonFiniteAudio; the other stream of the pass gets its audio."""

    from utter_tts.codec.speech_tokenizer import NonFiniteAudio
    from utter_tts.engine.decoding import CodecSlots, DecodeBatcher, _Job

    codec = tts.pipeline.codec
    batcher = DecodeBatcher(codec)
    run = CodecSlots.run

    def overflowing(self, slots, codes):
        audio = run(self, slots, codes)
        audio[slots.index(bad.slot), 5] = float("inf")
        return audio

    monkeypatch.setattr(CodecSlots, "run", overflowing)
    try:
        codes = torch.randint(0, 2048, (2, 16))
        good, bad = batcher.decoder(), batcher.decoder()
        good.start()
        bad.start()
        good_job, bad_job = _Job(good, codes), _Job(bad, codes)
        batcher._serve([good_job, bad_job])
        assert isinstance(bad_job.error, NonFiniteAudio) and bad_job.done.is_set()
        assert good_job.error is None and torch.isfinite(good_job.audio).all()
    finally:
        batcher.close()


def test_codec_slots_decode_like_separate_decoders(tts):
    """Streams decoded through codec slots (the engine's decoder: states resident in one slot-indexed
    state, pushes of several streams in one pass, across a chunk restart) equal separate decoders, and
    a released slot starts the next stream fresh."""
    from utter_tts.engine.decoding import DecodeBatcher

    codec = tts.pipeline.codec
    codec.chunk_frames, saved = 12, codec.chunk_frames  # restarts within the test's 20 frames
    batcher = DecodeBatcher(codec, max_batch=2)
    try:
        streams = [
            torch.randint(0, 2048, (20, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)
        ]
        want = [codec.stream_decoder().push(s) for s in streams]
        decoders = [batcher.decoder() for _ in streams[:2]]
        got: list[list[torch.Tensor]] = [[], []]
        with batcher.held():  # the first pushes of both streams: one pass
            threads = [
                threading.Thread(target=lambda i=i: got[i].append(decoders[i].push(streams[i][:1])))
                for i in range(2)
            ]
            for t in threads:
                t.start()
            while len(batcher.jobs) < 2:
                time.sleep(0.01)
        for t in threads:
            t.join()
        assert batcher.passes[-1] == [2]
        for start in range(1, 20, 4):
            for i in range(2):
                got[i].append(decoders[i].push(streams[i][start : start + 4]))
        for i in range(2):
            torch.testing.assert_close(torch.cat(got[i]), want[i], rtol=0, atol=3e-5 * want[i].abs().max())
        used = decoders[0].slot
        decoders[0].close()
        third = batcher.decoder()
        out = torch.cat([third.push(streams[2][:8]), third.push(streams[2][8:])])
        assert third.slot == used  # the released slot, reset
        torch.testing.assert_close(out, want[2], rtol=0, atol=3e-5 * want[2].abs().max())
    finally:
        codec.chunk_frames = saved
        batcher.close()


def test_codec_slots_run_every_push_as_captured_lengths(tts, monkeypatch):
    """With graphs, a push of a length not captured runs as replays of the captured ones (the longest that
    fits first): the audio is what one eager push gives. Replays are played here by eager passes that
    refuse any length that was not captured."""
    from utter_tts.engine.decoding import GRAPH_FRAMES, CodecSlots

    codec = tts.pipeline.codec
    slots = CodecSlots(codec, 2, use_graphs=True)
    lengths = []

    def replay(rows, codes):
        assert codes.shape[1] in GRAPH_FRAMES
        lengths.append(codes.shape[1])
        return slots._pass(torch.tensor(rows), codes)

    monkeypatch.setattr(slots, "_replay", replay)
    codes = torch.randint(0, 2048, (1, 14, 16), generator=torch.Generator().manual_seed(5))
    want = codec.stream_decoder().push(codes[0])
    slots.reset(0)
    got = torch.cat([slots.run([0], codes[:, :11])[0], slots.run([0], codes[:, 11:])[0]])
    assert lengths == [8, 3, 3]  # 11 = 8 + 3, then 3
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=3e-5 * want.abs().max())


def test_warmup_freezes_the_long_lived_objects(tts):
    """After warm-up the objects alive (the model among them) are out of the collector's full passes."""
    import gc

    eng = Engine(tts.pipeline, max_streams=1, max_frames=16, max_prompt=128, max_text_tokens=128)
    try:
        gc.unfreeze()
        eng.warmup()
        assert gc.get_freeze_count() > 0
        assert all(o is not eng for o in gc.get_objects())  # frozen: in none of the generations
    finally:
        gc.unfreeze()
        eng.close()


def test_a_burst_of_requests_is_admitted_in_one_prefill(tts, voices, monkeypatch):
    """While another caller is still building its prompt, an idle engine's admission waits for it (at most
    GATHER_IDLE_S after the first arrival): the burst is prefilled in one pass, not racing the callers."""
    from utter_tts.engine import scheduler as sched

    eng = Engine(tts.pipeline, max_streams=4, max_frames=64, max_prompt=128, max_text_tokens=128)
    try:
        calls = []
        prefill = eng.runner.prefill
        monkeypatch.setattr(
            eng.runner, "prefill", lambda first, jobs: calls.append(len(jobs)) or prefill(first, jobs)
        )
        monkeypatch.setattr(sched, "GATHER_IDLE_S", 30.0)  # only the last caller's end may release the burst
        reqs = _requests(voices)
        with eng.scheduler.preparing_one():  # a caller still building its prompt
            gens = [eng.submit(r) for r in reqs[:2]]
            time.sleep(0.3)
            assert calls == [] and all(g.admitted_at is None for g in gens)
        for g in gens:
            g.result(timeout=60)
        assert calls == [2]  # both in one packed prefill, once the last prompt was built

        # the wait is bounded: a caller that never finishes delays admission by GATHER_S only
        monkeypatch.setattr(sched, "GATHER_IDLE_S", 0.2)
        with eng.scheduler.preparing_one():
            t = time.perf_counter()
            g = eng.submit(reqs[0])
            g.result(timeout=60)
            assert g.admitted_at - g.submitted >= 0.2
            assert time.perf_counter() - t < 30
        # alone, a request is admitted at once (its own prompt building does not hold it)
        monkeypatch.setattr(sched, "GATHER_IDLE_S", 5.0)
        g = eng.submit(reqs[0])
        g.result(timeout=60)
        assert g.admitted_at - g.submitted < 2.5
    finally:
        eng.close()


def test_newcomers_are_prefilled_a_row_budget_at_a_time_while_streams_run(tts, voices, monkeypatch):
    """While a stream runs, a burst is prefilled in passes of at most PREFILL_ROWS prompt rows (at least one
    prompt a pass), the running stream's frames between them; an idle engine prefills a burst whole. Every
    stream still equals the plain model."""
    from utter_tts.engine import scheduler as sched

    eng = Engine(tts.pipeline, max_streams=4, max_frames=64, max_prompt=128, max_text_tokens=128)
    try:
        calls = []  # per prefill: its prompts' rows, the streams running, the frames run so far
        prefill = eng.runner.prefill

        def spy(first, jobs):
            s = eng.scheduler
            calls.append(([p.embeds.shape[0] for p, _, _ in jobs], len(s.live), s.frames_run))
            return prefill(first, jobs)

        monkeypatch.setattr(eng.runner, "prefill", spy)
        reqs = _requests(voices)[:3]
        rows = [eng.pipeline.prepare(r).plan.rows for r in reqs]
        monkeypatch.setattr(sched, "PREFILL_ROWS", max(rows))  # room for one prompt a pass, two at most
        runner = Request(TEXTS["english"], "clone", "english", voice=voices[0], sampling=GREEDY)
        first = eng.submit(runner)
        while first.frames < 2:
            time.sleep(0.01)
        later = [eng.submit(r) for r in reqs]
        got = [g.result(60) for g in [first, *later]]
        passes = calls[1:]
        assert sorted(r for rs, _, _ in passes for r in rs) == sorted(rows)
        assert len(passes) >= 2  # the three did not come in at once
        for rs, live, _ in passes:
            assert live >= 1 and (len(rs) == 1 or sum(rs) <= max(rows))
        frames = [f for _, _, f in passes]
        assert all(b > a for a, b in zip(frames, frames[1:]))  # the running stream's frames in between
        for req, codes in zip([runner, *reqs], got):
            assert torch.equal(codes, tts.generate_codes([req])[0])

        calls.clear()  # idle: the same burst in one pass, whatever the budget
        monkeypatch.setattr(sched, "PREFILL_ROWS", 1)
        with eng.scheduler.preparing_one():  # held until all three are in
            gens = [eng.submit(r) for r in reqs]
        for g in gens:
            g.result(60)
        assert [sorted(rs) for rs, _, _ in calls] == [sorted(rows)]
    finally:
        eng.close()


def test_admission_waits_less_for_a_burst_while_streams_run(tts):
    """With streams running, a burst delays admission by at most GATHER_S (their frames go on meanwhile);
    an idle engine waits up to GATHER_IDLE_S; nobody building a prompt means no wait at all."""
    from utter_tts.engine import scheduler as sched
    from utter_tts.engine.scheduler import Generation

    eng = Engine(tts.pipeline, max_streams=2, max_frames=16, max_prompt=128, max_text_tokens=128)
    s = eng.scheduler
    try:
        with s.lock:  # the scheduler's thread sleeps on this lock: the books below are ours for a moment
            waiting, running = Generation(job=None, submitted=100.0), Generation(job=None)
            s.pending.append(waiting)
            try:
                s.arrived = 99.0
                assert s._gathering(100.0) == 0.0  # nobody is building a prompt, nobody came lately
                s.arrived = 100.0  # a caller came just now: a moment for the burst's next one
                assert s._gathering(100.0) == pytest.approx(sched.QUIET_S)
                assert s._gathering(100.0 + sched.QUIET_S) == 0.0
                s.arrived = 100.0 + sched.GATHER_IDLE_S  # callers keep coming: bounded all the same
                assert s._gathering(100.0 + sched.GATHER_IDLE_S) == 0.0
                s.preparing += 1
                assert s._gathering(100.0) == pytest.approx(sched.GATHER_IDLE_S)
                s.live.append(running)
                assert s._gathering(100.0) == pytest.approx(sched.GATHER_S)
                assert sched.GATHER_S < sched.GATHER_IDLE_S
                assert s._gathering(100.0 + sched.GATHER_S) == 0.0
                s.preparing -= 1
                s.arrived = 100.0
                assert s._gathering(100.0) == 0.0  # streams run: no quiet window
                s.preparing += 1
            finally:
                s.pending.remove(waiting)
                if running in s.live:
                    s.live.remove(running)
                s.preparing -= 1
    finally:
        eng.close()


def test_a_prompt_that_fails_to_build_fails_alone(tts, voices, monkeypatch):
    """Prompts are made in the admission step, a burst's in one pass: one that cannot be made fails its
    own generation only, the others of its burst run."""
    from utter_tts.engine import scheduler as sched
    from utter_tts.engine.scheduler import EngineFault

    eng = Engine(tts.pipeline, max_streams=4, max_frames=64, max_prompt=128, max_text_tokens=128)
    try:
        monkeypatch.setattr(sched, "GATHER_IDLE_S", 30.0)
        reqs = _requests(voices)
        calls = []
        prefill = eng.runner.prefill
        monkeypatch.setattr(
            eng.runner, "prefill", lambda first, jobs: calls.append(len(jobs)) or prefill(first, jobs)
        )
        with eng.scheduler.preparing_one():  # hold admission while one job is broken
            bad, good, also = eng.submit(reqs[0]), eng.submit(reqs[1]), eng.submit(reqs[0])
            # an x-vector of the wrong width: the burst's batched pass fails, then this prompt alone
            bad.job.plan.voice.speaker_embedding = torch.zeros(3)
        with pytest.raises(EngineFault, match="building the prompt failed"):
            bad.result(timeout=60)
        assert good.result(timeout=120).shape[0] > 0 and also.result(timeout=120).shape[0] > 0
        assert calls == [2]  # the two good ones still in one prefill
        assert eng.scheduler.active == 0 or all(g is not bad for g in eng.scheduler.live)
    finally:
        eng.close()


def test_a_background_warm_up_serves_requests_while_it_captures(tts, voices, monkeypatch):
    """`warmup(background=True)` captures the one-stream graphs and returns; requests are answered while
    the other captures wait for idle moments (each made slow on purpose here; their frames and codec
    passes run eagerly meanwhile), their audio equal to the plain model's; then every graph exists."""
    from utter_tts.engine.decoding import CodecSlots
    from utter_tts.engine.runner import Runner

    captured = []

    class Replay:  # a captured graph replays the same step (the CPU has no CUDA graphs)
        def __init__(self, run):
            self.replay = run

    def frame_capture(self, B, span):
        captured.append(("frame", B, threading.current_thread().name))
        time.sleep(0.3)
        graph = self.graphs[(B, span)] = Replay(lambda: self._step(B, span))
        return graph

    def codec_capture(self, size, n):
        captured.append(("codec", size, threading.current_thread().name))
        time.sleep(0.3)
        index = torch.full((size,), self.slots, dtype=torch.long)
        codes = torch.zeros(size, n, 16, dtype=torch.long)
        audio = self._pass(index, codes)
        entry = self.graphs[(size, n)] = (
            Replay(lambda: audio.copy_(self._pass(index, codes))),
            index,
            codes,
            audio,
        )
        return entry

    monkeypatch.setattr(Runner, "_capture", frame_capture)
    monkeypatch.setattr(CodecSlots, "_capture", codec_capture)
    requests = _requests(voices)[:3]
    want = tts.pipeline.synthesize([tts.pipeline.prepare(r) for r in requests])
    engine = Engine(
        tts.pipeline, max_streams=4, max_frames=64, max_prompt=128, max_text_tokens=128, use_graphs=True
    )
    engine.decoding.slots.use_graphs = True
    try:
        engine.warmup(background=True)
        # before it returns, on the caller's thread: what a first request needs, and nothing else
        now = {(kind, size) for kind, size, thread in captured if thread == "MainThread"}
        assert now == {("frame", 1), ("codec", 1)}
        streams = [engine.stream(r) for r in requests]
        first = [next(s) for s in streams]  # each stream's first chunk...
        assert engine.runner.deferred or engine.decoding.slots.deferred  # ...while the warm-up goes on
        assert not engine.wait_warm(timeout=0)
        got = [np.concatenate([f, *s]) for f, s in zip(first, streams)]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, atol=1e-4)
        frozen = gc.get_freeze_count()
        assert engine.wait_warm(timeout=60)
        assert gc.get_freeze_count() > frozen  # what the background captures made is frozen too
        assert {B for B, _ in engine.runner.graphs} == set(engine.runner.batch_buckets)
        assert {size for size, _ in engine.decoding.slots.graphs} == set(engine.decoding.slots.buckets)
        later = {thread for _, _, thread in captured if thread != "MainThread"}
        assert later == {"utter-tts-scheduler", "utter-tts-decoder"}  # in the idle moments of each
    finally:
        engine.close()
