"""Speech over a real uvicorn server: OpenAI SDK and httpx, formats, speed, SSE, chunked, WebSocket, jobs."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import httpx
import numpy as np
import pytest
from openai import OpenAI
from websockets.sync.client import connect as ws_connect

from tests.server.conftest import ALICE, FRAMES, ServerThread, decode_audio, make_config, session_rest

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
SR = 24000
SAMPLES_PER_FRAME = 1920


@pytest.fixture
def oa(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=ALICE, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference_pcm(server) -> np.ndarray:
    """What the model says for the standard request, straight from the raw pcm output."""
    r = httpx.post(
        f"{server.url}/v1/audio/speech",
        headers={"Authorization": f"Bearer {ALICE}"},
        json={
            "model": "tts-1",
            "input": "Hello there.",
            "voice": "ryan",
            "response_format": "pcm",
            "seed": 7,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    pcm, _ = decode_audio(r.content, "pcm")
    assert 0 < len(pcm) <= FRAMES * SAMPLES_PER_FRAME and len(pcm) % SAMPLES_PER_FRAME == 0
    return pcm


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_sdk_every_format_decodes_to_the_right_length_and_rate(oa, reference_pcm, fmt):
    resp = oa.audio.speech.create(
        model="tts-1", voice="ryan", input="Hello there.", response_format=fmt, extra_body={"seed": 7}
    )
    audio, rate = decode_audio(resp.content, fmt)
    assert rate == (48000 if fmt == "opus" else SR)  # ffmpeg decodes Ogg Opus at 48 kHz
    # lossy codecs add a frame or two of padding; 0.1 s is far below one model frame's worth of error
    assert abs(len(audio) / rate - len(reference_pcm) / SR) < 0.1
    if fmt in ("wav", "flac", "pcm"):
        assert np.max(np.abs(audio[: len(reference_pcm)] - reference_pcm)) < 1e-4  # lossless: same samples


def _read_with_soundfile(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if fmt == "pcm":  # headerless: the reader must be told what it is
        return sf.read(io.BytesIO(data), dtype="float32", format="RAW", subtype="PCM_16", samplerate=SR,
                       channels=1)  # fmt: skip
    info = sf.info(io.BytesIO(data))
    assert info.frames < 10 * SR, f"{fmt}: header length {info.frames}"  # a sane length, not "unknown"
    return sf.read(io.BytesIO(data), dtype="float32")


# The lossy formats' decoders add encoder delay/padding; 0.1 s is far below one model frame's worth.
LENGTH_SLACK_S = {"mp3": 0.1, "opus": 0.1, "aac": 0.1, "flac": 0.0, "wav": 0.0, "pcm": 0.0}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_non_streamed_file_is_complete_and_read_by_soundfile_and_pyav(client, reference_pcm, fmt):
    """`stream: false` (and a plain WAV or FLAC request) gives the whole file with its Content-Length and
    exact header sizes: soundfile (libsndfile) and PyAV both read it at the right length. soundfile reads
    no AAC at all, so that one is checked with PyAV alone."""
    bodies = ([{}] if fmt in ("wav", "flac") else []) + [{"stream": False}]
    for extra in bodies:
        body = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": fmt, "seed": 7}
        r = client.post("/v1/audio/speech", json={**body, **extra})
        assert r.status_code == 200, r.text
        assert int(r.headers["content-length"]) == len(r.content) and "chunked" not in r.headers.get(
            "transfer-encoding", ""
        )
        readers = [decode_audio] if fmt == "aac" else [decode_audio, _read_with_soundfile]
        for read in readers:
            audio, rate = read(r.content, fmt)
            seconds = len(audio) / rate
            assert abs(seconds - len(reference_pcm) / SR) <= LENGTH_SLACK_S[fmt], (read.__name__, seconds)
            if LENGTH_SLACK_S[fmt] == 0.0:
                assert np.max(np.abs(audio - reference_pcm)) < 1e-4


def test_a_streamed_wav_or_flac_says_its_length_is_unknown(client, reference_pcm):
    """Asking for a stream keeps WAV and FLAC streaming: chunked, and a header whose length is not
    known (PyAV reads all of it; see the README for what readers can expect)."""
    for fmt in ("wav", "flac"):
        body = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": fmt, "seed": 7}
        for extra in ({"stream": True}, {"stream_format": "audio"}):
            r = client.post("/v1/audio/speech", json={**body, **extra})
            assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.headers
            audio, _ = decode_audio(r.content, fmt)
            assert np.max(np.abs(audio - reference_pcm)) < 1e-4
    r = client.post("/v1/audio/speech", json={**body, "stream": False, "stream_format": "sse"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_openai_sdk_with_streaming_response(oa, reference_pcm, fmt):
    with oa.audio.speech.with_streaming_response.create(
        model="tts-1", voice="ryan", input="Hello there.", response_format=fmt, extra_body={"seed": 7}
    ) as resp:
        assert resp.headers["content-type"].startswith("audio/")
        data = b"".join(resp.iter_bytes())
    audio, rate = decode_audio(data, fmt)
    assert abs(len(audio) / rate - len(reference_pcm) / SR) < 0.1


def test_output_sample_rate(client, reference_pcm):
    r = client.post(
        "/v1/audio/speech",
        json={
            "model": "tts-1",
            "input": "Hello there.",
            "voice": "ryan",
            "response_format": "flac",
            "seed": 7,
            "sample_rate": 16000,
        },
    )
    audio, rate = decode_audio(r.content, "flac")
    assert rate == 16000 and abs(len(audio) / rate - len(reference_pcm) / SR) < 0.02


def centroid(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    return float((spec * freqs).sum() / spec.sum())


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_changes_duration_not_pitch(client, reference_pcm, speed):
    r = client.post(
        "/v1/audio/speech",
        json={
            "model": "tts-1",
            "input": "Hello there.",
            "voice": "ryan",
            "response_format": "pcm",
            "seed": 7,
            "speed": speed,
        },
    )
    audio, _ = decode_audio(r.content, "pcm")
    # atempo's overlap-add window costs a few tens of milliseconds at the end, nothing more
    assert abs(len(audio) / SR - len(reference_pcm) / SR / speed) < 0.06
    # atempo keeps the spectrum where it was; resampling would scale it by `speed`
    ratio = centroid(audio, SR) / centroid(reference_pcm, SR)
    assert abs(np.log2(ratio)) < 0.25, ratio


def test_sse_events(oa, reference_pcm):
    with oa.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="ryan",
        input="Hello there.",
        response_format="pcm",
        stream_format="sse",
        extra_body={"seed": 7},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"}
    assert events[-1]["usage"]["output_tokens"] == len(reference_pcm) // SAMPLES_PER_FRAME
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    audio, _ = decode_audio(pcm, "pcm")
    assert len(audio) == len(reference_pcm)


@pytest.fixture
def slow_frames(server):
    """Inject a delay after every generated chunk, so "before the last frame" is measurable."""
    server.state.pool.chunk_delay_s = 0.8
    yield 0.8
    server.state.pool.chunk_delay_s = 0.0


def _first_and_last(stream_bytes) -> tuple[float, float, bytes]:
    start = time.monotonic()
    first, data = None, b""
    for piece in stream_bytes:
        if piece and first is None:
            first = time.monotonic() - start
        data += piece
    return first, time.monotonic() - start, data


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_streaming_delivers_audio_before_generation_ends(client, slow_frames, stream_format):
    body = {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": "ryan",
        "response_format": "pcm",
        "seed": 7,
        "stream_format": stream_format,
    }
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        first, last, data = _first_and_last(r.iter_raw())
    # frames come in two chunks (1 frame, then the rest): the first arrives a whole delay before the end
    assert first is not None and last - first > slow_frames * 0.8, (first, last)
    assert data


def test_websocket_streams_each_sentence(server, slow_frames):
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        start = {"type": "session.start", "voice": "ryan", "response_format": "pcm", "seed": 3}
        ws.send(json.dumps({**start, "text_mode": "sentence"}))
        started = json.loads(ws.recv(timeout=30))
        assert started["type"] == "session.started" and started["mode"] == "speak"
        # text arrives in pieces, as from an LLM; the first sentence completes before the rest is sent
        for piece in ["Hello ", "there. How", " are you"]:
            ws.send(json.dumps({"type": "input.append", "text": piece}))
        t0 = time.monotonic()
        events, audio, first_audio = [], b"", None
        while True:
            msg = ws.recv(timeout=60)
            if isinstance(msg, bytes):
                audio += msg
                first_audio = first_audio or time.monotonic() - t0
                continue
            event = json.loads(msg)
            events.append(event)
            if event["type"] == "sentence.done" and event["index"] == 0:
                ws.send(json.dumps({"type": "input.append", "text": " today?"}))
                ws.send(json.dumps({"type": "input.flush"}))
            if event["type"] in ("session.done", "error"):
                break
        done_at = time.monotonic() - t0
    assert [e["type"] for e in events if e["type"] == "sentence.start"] == ["sentence.start"] * 2
    assert [e["text"] for e in events if e["type"] == "sentence.start"] == [
        "Hello there.",
        "How are you today?",
    ]
    assert events[-1] == {"type": "session.done", "sentences": 2}
    assert first_audio is not None and done_at - first_audio > slow_frames
    pcm, _ = decode_audio(audio, "pcm")
    spoken = sum(e["audio_seconds"] for e in events if e["type"] == "sentence.done")
    assert abs(len(pcm) / SR - spoken) < 0.01


def test_websocket_live_speaks_from_the_first_words_as_the_whole_text(server, registry):
    """Live mode (the default): audio comes back before the text is complete, and the session's audio is
    the whole text's, spoken in streaming-text mode with the session's seed (dual-track, exact)."""
    from utter_tts.request import Request

    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    text = "Hello there, how are you today?"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "session.start", "voice": "ryan", "response_format": "pcm", "seed": 3}))
        started = json.loads(ws.recv(timeout=30))
        assert started["text_mode"] == "live"
        ws.send(json.dumps({"type": "input.append", "text": text[:15]}))  # "Hello there, ho"
        first = ws.recv(timeout=60)
        assert isinstance(first, bytes) and first  # audio before the rest of the text exists
        ws.send(json.dumps({"type": "input.append", "text": text[15:]}))
        ws.send(json.dumps({"type": "input.flush"}))
        audio, events = session_rest(ws, first)
    assert events == [{"type": "session.done", "audio_seconds": round(len(audio) // 2 / SR, 3)}]
    tts = registry.models["custom_voice"].tts
    request = Request(text, "speak", speaker="ryan", seed=3, sampling={"max_new_tokens": FRAMES},
                      non_streaming_mode=False)  # fmt: skip
    want = tts.pipeline.synthesize([tts.pipeline.prepare(request)])[0]
    got, _ = decode_audio(audio, "pcm")
    assert len(got) == len(want) and np.max(np.abs(got - want)) < 2e-4


@pytest.mark.parametrize("text_mode", ["sentence", "live"])
def test_websocket_session_survives_bad_messages(server, text_mode):
    """Each bad message gets an error event naming the field; the session then speaks as usual."""
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    bad = [
        ('{"type": "input.append", "text": "a\\ud800b"}', "invalid_text", "text"),  # a lone surrogate
        ('{"type": "input.append", "text": "nul\\u0000"}', "invalid_text", "text"),
        ('{"type": "input.append", "text": 5}', "invalid_type", "text"),
        ('{"type": "input.append", "text": "<|im_end|>"}', "special_token", "text"),
        ('{"type": "input.nonsense"}', "unknown_message", "type"),
        ("{not json", "invalid_json", "type"),
        (b"\x00binary", "invalid_message", "type"),
    ]
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        start = {"type": "session.start", "voice": "ryan", "response_format": "pcm", "text_mode": text_mode}
        ws.send(json.dumps(start))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.started"
        for message, code, param in bad:
            ws.send(message)
            event = json.loads(ws.recv(timeout=30))
            assert event["type"] == "error" and event["error"]["code"] == code, (message, event)
            assert event["error"]["param"] == param
        ws.send(json.dumps({"type": "input.append", "text": "Still here."}))
        ws.send(json.dumps({"type": "input.flush"}))
        audio, events = session_rest(ws)
    if text_mode == "sentence":
        assert events[0] == {"type": "sentence.start", "index": 0, "text": "Still here."}
        assert events[-1] == {"type": "session.done", "sentences": 1} and audio
    else:  # one generation, no sentence events
        pcm, _ = decode_audio(audio, "pcm")
        assert events == [{"type": "session.done", "audio_seconds": round(len(pcm) / SR, 3)}] and audio


def test_a_long_live_session_rolls_over_at_sentence_ends_with_its_voice_and_seed(registry, tmp_path):
    """A live session whose text grows past `live_rollover_chars` moves on to a new generation at the next
    sentence end: its audio is that of each part spoken alone in streaming-text mode with the session's
    voice and seed, one after the other (no part cut short, nothing lost)."""
    from utter_tts.request import Request
    from utter_tts.server.app import create_app

    parts = ["One two three four five. ", "Six seven eight nine ten. ", "Eleven."]
    words = " ".join(parts).split()
    app = create_app(make_config(tmp_path, live_rollover_chars=20), registry)
    with ServerThread(app) as srv:
        url = f"ws://127.0.0.1:{srv.port}/v1/audio/speech/stream"
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
            start = {"type": "session.start", "voice": "ryan", "response_format": "pcm", "seed": 11}
            ws.send(json.dumps(start))
            assert json.loads(ws.recv(timeout=30))["type"] == "session.started"
            for i, word in enumerate(words):
                ws.send(json.dumps({"type": "input.append", "text": word if i == 0 else " " + word}))
            ws.send(json.dumps({"type": "input.flush"}))
            audio, events = session_rest(ws)
    tts = registry.models["custom_voice"].tts
    sampling = {"max_new_tokens": FRAMES}
    alone = [
        Request(p, "speak", speaker="ryan", seed=11, sampling=sampling, non_streaming_mode=False)
        for p in parts
    ]
    want = [tts.pipeline.synthesize([tts.pipeline.prepare(r)])[0] for r in alone]
    got, _ = decode_audio(audio, "pcm")
    assert events == [{"type": "session.done", "audio_seconds": round(len(got) / SR, 3)}]
    assert len(got) == sum(len(w) for w in want)
    assert np.max(np.abs(got - np.concatenate(want))) < 2e-4


def test_websocket_live_refuses_a_special_token_split_across_appends(server):
    """Live text meets the whole-text rule: the append that would complete a special-token string begun in
    an earlier one is refused (naming the field), the text before it stands, and the session goes on."""
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "session.start", "voice": "ryan", "response_format": "pcm"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.started"
        for piece in ("Say <|im", "_e", "nd|>"):
            ws.send(json.dumps({"type": "input.append", "text": piece}))
        event = ws.recv(timeout=60)
        while isinstance(event, bytes):  # audio of the words before it may come first
            event = ws.recv(timeout=60)
        event = json.loads(event)
        assert event["type"] == "error" and event["error"]["code"] == "special_token"
        assert event["error"]["param"] == "text"
        ws.send(json.dumps({"type": "input.append", "text": " and more."}))
        ws.send(json.dumps({"type": "input.flush"}))
        audio, events = session_rest(ws)
    assert events[-1]["type"] == "session.done" and not any(e["type"] == "error" for e in events)


def test_openai_voice_names_are_preset_speakers(oa, reference_pcm):
    """OpenAI's stock example works: `alloy` is the preset speaker the documented table names."""
    from utter_tts.server.planner import OPENAI_VOICES

    assert OPENAI_VOICES["echo"] == "ryan"
    resp = oa.audio.speech.create(
        model="tts-1", voice="echo", input="Hello there.", response_format="pcm", extra_body={"seed": 7}
    )
    pcm, _ = decode_audio(resp.content, "pcm")
    assert np.array_equal(pcm, reference_pcm)  # the same request as voice="ryan"
    alloy = oa.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav")
    assert decode_audio(alloy.content, "wav")[0].size > 0


def test_openai_voice_mapped_to_a_saved_voice(registry, reference_wav, tmp_path):
    from tests.server.conftest import ServerThread, make_config
    from utter_tts.server.app import create_app

    app = create_app(make_config(tmp_path, openai_voices={"onyx": "narrator"}), registry)
    with ServerThread(app) as srv:
        headers = {"Authorization": f"Bearer {ALICE}"}
        body = {"model": "tts-1", "voice": "onyx", "input": "Hi.", "response_format": "wav"}
        r = httpx.post(f"{srv.url}/v1/audio/speech", json=body, headers=headers, timeout=120)
        assert r.status_code == 400 and "narrator" in r.json()["error"]["message"]  # not saved yet
        saved = httpx.post(
            f"{srv.url}/v1/voices",
            files={"file": ("n.wav", reference_wav, "audio/wav")},
            data={"name": "narrator"},
            headers=headers,
            timeout=120,
        )
        assert saved.status_code == 201, saved.text
        r = httpx.post(f"{srv.url}/v1/audio/speech", json=body, headers=headers, timeout=120)
        assert r.status_code == 200 and decode_audio(r.content, "wav")[0].size > 0


def test_websocket_rejects_bad_key(server):
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream?api_key=sk-wrong"
    with ws_connect(url, open_timeout=30) as ws:
        event = json.loads(ws.recv(timeout=30))
        assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_long_job_submit_poll_fetch(client, fmt):
    text = " ".join(f"Sentence number {i} of the document." for i in range(3))
    r = client.post(
        "/v1/audio/speech/jobs",
        json={"model": "tts-1", "input": text, "voice": "ryan", "response_format": fmt, "seed": 1},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["progress"]["frames_estimated"] > 0
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/audio/speech/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["frames_done"] > 0
    r = client.get(f"/v1/audio/speech/jobs/{job['id']}/content")
    for read in (decode_audio, _read_with_soundfile):  # a complete file: its header holds its length
        audio, rate = read(r.content, fmt)
        assert abs(len(audio) / rate - job["progress"]["frames_done"] / 12.5) < 0.1
    assert client.get("/v1/audio/speech/jobs").json()["data"][0]["id"] == job["id"]
    assert client.delete(f"/v1/audio/speech/jobs/{job['id']}").json()["deleted"] is True
    assert client.get(f"/v1/audio/speech/jobs/{job['id']}").status_code == 404


def test_job_cancel(client, bob, slow_frames):
    text = " ".join(f"Sentence number {i}." for i in range(6))
    job = client.post("/v1/audio/speech/jobs", json={"model": "tts-1", "input": text, "voice": "ryan"}).json()
    assert bob.get(f"/v1/audio/speech/jobs/{job['id']}").status_code == 404  # jobs are private too
    r = client.get(f"/v1/audio/speech/jobs/{job['id']}/content")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"
    job = client.post(f"/v1/audio/speech/jobs/{job['id']}/cancel").json()
    assert job["status"] == "cancelled"
    r = client.get(f"/v1/audio/speech/jobs/{job['id']}/content")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_failed"


def test_health_models_and_metrics(client, server):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    assert {m["model_type"] for m in health["models"]} == {"base", "voice_design", "custom_voice"}
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {
        "base",
        "voice_design",
        "custom_voice",
    }
    client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "ryan"})
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "utter_tts_requests_total",
        "utter_tts_time_to_first_audio_seconds_count",
        "utter_tts_real_time_factor_count",
        "utter_tts_queue_depth",
        "utter_tts_errors_total",
    ):
        assert name in text
    assert 'route="/v1/audio/speech",status="200"' in text
    # a voice nobody has (not "alloy": that one is a preset speaker, and the count held only when an
    # earlier test of the session had made such an error)
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "no-such-voice"})
    assert r.json()["error"]["code"] == "voice_not_found"
    assert 'utter_tts_errors_total{code="voice_not_found"}' in httpx.get(f"{server.url}/metrics").text


def test_web_page_is_served(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/audio/speech" in r.text and "<script>" in r.text


def test_schema_docs_page_needs_no_other_host(server):
    """/docs works offline: our own page, which reads /openapi.json and names no other host (FastAPI's
    Swagger UI loads from a CDN)."""
    r = httpx.get(server.url + "/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'fetch("/openapi.json")' in r.text
    page = r.text.lower()
    assert "://" not in page and not re.search(r"""["'(=]\s*//""", page)  # no URL, protocol-relative either
    assert not any(word in page for word in ("cdn", "jsdelivr", "unpkg"))
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/audio/speech" in spec["paths"] and "/docs" not in spec["paths"]


def test_per_frame_delay_streams_early_and_feeds_the_decoder_only_new_frames(client, monkeypatch):
    """A delay after every generated frame (in the model, not the server): audio still starts long
    before the last frame, and the codec decoder receives each frame exactly once."""
    from utter_tts.codec.speech_tokenizer import StreamingDecoder
    from utter_tts.pipeline import Pipeline

    delay, generated, pushed = 0.15, [], []
    frames_of = Pipeline.frames

    def slow_frames(self, *a, **kw):
        for item in frames_of(self, *a, **kw):
            generated.append(time.monotonic())
            yield item
            time.sleep(delay)

    push = StreamingDecoder.push

    def counting_push(self, codes):
        pushed.append(int(codes.shape[-2]))
        return push(self, codes)

    monkeypatch.setattr(Pipeline, "frames", slow_frames)
    monkeypatch.setattr(StreamingDecoder, "push", counting_push)
    body = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": "pcm", "seed": 11}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        first, last, data = _first_and_last(r.iter_raw())
    n = len(generated)
    assert n >= 3 and first is not None
    assert last - first > (n - 2) * delay  # the first bytes left while frames were still being made
    assert sum(pushed) == n and pushed[0] == 1  # every frame decoded once: first chunk, then only new ones
    audio, _ = decode_audio(data, "pcm")
    assert len(audio) == n * SAMPLES_PER_FRAME
