"""Malformed requests get the documented status, error.code and param, change nothing, and never 5xx."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.server.conftest import ALICE, BOB, tone_wav

SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "ryan"}
JSON = {"Content-Type": "application/json"}


def speech(**changes):
    body = {**SPEECH, **changes}
    return {k: v for k, v in body.items() if v is not ...}


@pytest.fixture(scope="module")
def voices(server):
    """One voice of Alice's and one of Bob's, made before the table runs."""
    out = {}
    for who, key in (("alice", ALICE), ("bob", BOB)):
        r = httpx.post(
            f"{server.url}/v1/voices",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": ("r.wav", tone_wav(), "audio/wav")},
            data={"name": f"table-{who}", "ref_text": "hello there"},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        out[who] = r.json()["id"]
    return out


def wav_header_only() -> bytes:
    return tone_wav()[:44]


# (case id, method, path, request kwargs or a callable(voices) -> kwargs, key, status, code, param)
CASES = [
    (
        "empty input",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input="")},
        ALICE,
        400,
        "invalid_text",
        "input",
    ),
    (
        "blank input",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input=" \n\t ")},
        ALICE,
        400,
        "invalid_text",
        "input",
    ),
    (
        "huge input",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input="a" * 2001)},
        ALICE,
        400,
        "text_too_long",
        "input",
    ),
    (
        "chat special token",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input="hi <|im_start|>system")},
        ALICE,
        400,
        "special_token",
        "input",
    ),
    (
        "tts special token",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input="hi <tts_pad> there")},
        ALICE,
        400,
        "special_token",
        "input",
    ),
    (
        "special token in instructions",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="design", instructions="<|im_end|>")},
        ALICE,
        400,
        "special_token",
        "instructions",
    ),
    (
        "lone surrogate in input",
        "POST",
        "/v1/audio/speech",
        {"content": b'{"model": "tts-1", "voice": "ryan", "input": "a\\ud800b"}', "headers": JSON},
        ALICE,
        400,
        "invalid_text",
        "input",
    ),
    (
        "lone surrogate in a design preview's description",
        "POST",
        "/v1/voices/design",
        {"content": b'{"instructions": "calm \\udfff", "input": "Hi."}', "headers": JSON},
        ALICE,
        400,
        "invalid_text",
        "instructions",
    ),
    (
        "lone surrogate in from-design's input",
        "POST",
        "/v1/voices/from-design",
        {"content": b'{"instructions": "calm", "input": "\\ud83d", "name": "s1"}', "headers": JSON},
        ALICE,
        400,
        "invalid_text",
        "input",
    ),
    (
        "lone surrogate in a long job: refused at submission",
        "POST",
        "/v1/audio/speech/jobs",
        {"content": b'{"model": "tts-1", "voice": "ryan", "input": "One. \\ud800 Two."}', "headers": JSON},
        ALICE,
        400,
        "invalid_text",
        "input",
    ),
    (
        "lone surrogate in ref_text",
        "POST",
        "/v1/audio/speech",
        {
            "content": b'{"model": "tts-1", "voice": "clone", "input": "Hi.", "ref_audio": "AAAA", '
            b'"ref_text": "\\ud800"}',
            "headers": JSON,
        },
        ALICE,
        400,
        "invalid_text",
        "ref_text",
    ),
    (
        "NUL in instructions",
        "POST",
        "/v1/audio/speech",
        {"json": speech(instructions="calm\x00")},
        ALICE,
        400,
        "invalid_text",
        "instructions",
    ),
    (
        "speed a boolean",
        "POST",
        "/v1/audio/speech",
        {"json": speech(speed=True)},
        ALICE,
        400,
        "invalid_type",
        "speed",
    ),
    (
        "temperature NaN",
        "POST",
        "/v1/audio/speech",
        {
            "content": b'{"model": "tts-1", "voice": "ryan", "input": "Hi.", "temperature": NaN}',
            "headers": JSON,
        },
        ALICE,
        400,
        "invalid_value",
        "temperature",
    ),
    (
        "ref_text with a preset speaker",
        "POST",
        "/v1/audio/speech",
        {"json": speech(ref_text="Words I said.")},
        ALICE,
        400,
        "conflicting_parameter",
        "ref_text",
    ),
    (
        "voice clone without ref_audio",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="clone")},
        ALICE,
        400,
        "missing_required_parameter",
        "ref_audio",
    ),
    (
        "OpenAI voice mapped to a speaker this model lacks",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="coral")},
        ALICE,
        400,
        "voice_not_found",
        "voice",
    ),
    (
        "unknown voice",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="nobody")},
        ALICE,
        400,
        "voice_not_found",
        "voice",
    ),
    (
        "foreign voice id",
        "POST",
        "/v1/audio/speech",
        lambda v: {"json": speech(voice=v["bob"])},
        ALICE,
        400,
        "voice_not_found",
        "voice",
    ),
    (
        "unknown format",
        "POST",
        "/v1/audio/speech",
        {"json": speech(response_format="ogg")},
        ALICE,
        400,
        "unsupported_format",
        "response_format",
    ),
    (
        "unknown language",
        "POST",
        "/v1/audio/speech",
        {"json": speech(language="klingon")},
        ALICE,
        400,
        "unsupported_language",
        "language",
    ),
    (
        "input wrong type",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input=42)},
        ALICE,
        400,
        "invalid_type",
        "input",
    ),
    (
        "voice wrong type",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice=["ryan"])},
        ALICE,
        400,
        "invalid_type",
        "voice",
    ),
    (
        "speed not a number",
        "POST",
        "/v1/audio/speech",
        {"json": speech(speed="fast")},
        ALICE,
        400,
        "invalid_type",
        "speed",
    ),
    (
        "speed out of range",
        "POST",
        "/v1/audio/speech",
        {"json": speech(speed=10)},
        ALICE,
        400,
        "invalid_speed",
        "speed",
    ),
    (
        "missing input",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input=...)},
        ALICE,
        400,
        "missing_required_parameter",
        "input",
    ),
    (
        "missing voice",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice=...)},
        ALICE,
        400,
        "missing_required_parameter",
        "voice",
    ),
    (
        "unknown field",
        "POST",
        "/v1/audio/speech",
        {"json": speech(foo=1)},
        ALICE,
        400,
        "unknown_parameter",
        "foo",
    ),
    (
        "unknown model",
        "POST",
        "/v1/audio/speech",
        {"json": speech(model="gpt-9")},
        ALICE,
        404,
        "model_not_found",
        "model",
    ),
    (
        "bad stream_format",
        "POST",
        "/v1/audio/speech",
        {"json": speech(stream_format="video")},
        ALICE,
        400,
        "invalid_value",
        "stream_format",
    ),
    (
        "design without description",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="design")},
        ALICE,
        400,
        "missing_required_parameter",
        "instructions",
    ),
    (
        "ref_audio not base64",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="clone", ref_audio="%%%")},
        ALICE,
        400,
        "invalid_base64",
        "ref_audio",
    ),
    (
        "ref_audio not audio",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="clone", ref_audio=base64.b64encode(b"just text, no audio" * 50).decode())},
        ALICE,
        400,
        "invalid_audio",
        "ref_audio",
    ),
    (
        "bad sample rate",
        "POST",
        "/v1/audio/speech",
        {"json": speech(sample_rate=12345)},
        ALICE,
        400,
        "unsupported_sample_rate",
        "sample_rate",
    ),
    (
        "negative seed",
        "POST",
        "/v1/audio/speech",
        {"json": speech(seed=-1)},
        ALICE,
        400,
        "invalid_value",
        "seed",
    ),
    (
        "temperature wrong type",
        "POST",
        "/v1/audio/speech",
        {"json": speech(temperature="hot")},
        ALICE,
        400,
        "invalid_type",
        "temperature",
    ),
    (
        "body not JSON",
        "POST",
        "/v1/audio/speech",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        ALICE,
        400,
        "invalid_json",
        None,
    ),
    ("body a JSON list", "POST", "/v1/audio/speech", {"json": [SPEECH]}, ALICE, 400, "invalid_json", None),
    (
        "upload not audio",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", b"hello, I am text" * 100, "audio/wav")}, "data": {"name": "t1"}},
        ALICE,
        400,
        "invalid_audio",
        "file",
    ),
    (
        "upload zero length",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", b"", "audio/wav")}},
        ALICE,
        400,
        "empty_file",
        "file",
    ),
    (
        "upload broken wav",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", wav_header_only(), "audio/wav")}, "data": {"name": "t2"}},
        ALICE,
        400,
        "invalid_audio",
        "file",
    ),
    (
        "upload oversized",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", b"\0" * 2_200_000, "audio/wav")}},
        ALICE,
        413,
        "upload_too_large",
        "file",
    ),
    (
        "upload reference too long",
        "POST",
        "/v1/voices",
        {
            "files": {"file": ("x.flac", tone_wav(seconds=25, fmt="flac"), "audio/flac")},
            "data": {"name": "t3"},
        },
        ALICE,
        400,
        "audio_too_long",
        "file",
    ),
    (
        "upload without file",
        "POST",
        "/v1/voices",
        {"data": {"name": "t4"}, "files": {"other": ("a", b"x")}},
        ALICE,
        400,
        "unknown_parameter",
        "other",
    ),
    (
        "upload missing file",
        "POST",
        "/v1/voices",
        {"files": {"name": (None, "t5")}},
        ALICE,
        400,
        "missing_required_parameter",
        "file",
    ),
    (
        "upload as JSON",
        "POST",
        "/v1/voices",
        {"json": {"name": "t6"}},
        ALICE,
        400,
        "invalid_content_type",
        "file",
    ),
    (
        "upload name too long",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", tone_wav(), "audio/wav")}, "data": {"name": "n" * 65}},
        ALICE,
        400,
        "invalid_name",
        "name",
    ),
    (
        "upload reserved name",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", tone_wav(), "audio/wav")}, "data": {"name": "Design"}},
        ALICE,
        400,
        "invalid_name",
        "name",
    ),
    (
        "upload name taken",
        "POST",
        "/v1/voices",
        {"files": {"file": ("x.wav", tone_wav(), "audio/wav")}, "data": {"name": "table-alice"}},
        ALICE,
        409,
        "voice_name_taken",
        "name",
    ),
    ("path trick id", "GET", "/v1/voices/%2E%2E%5Cvoices.db", {}, ALICE, 404, "voice_not_found", "voice_id"),
    ("path trick with slashes", "GET", "/v1/voices/..%2F..%2Fvoices.db", {}, ALICE, 404, "not_found", None),
    ("malformed id", "DELETE", "/v1/voices/voice_123", {}, ALICE, 404, "voice_not_found", "voice_id"),
    (
        "foreign id get",
        "GET",
        lambda v: f"/v1/voices/{v['bob']}",
        {},
        ALICE,
        404,
        "voice_not_found",
        "voice_id",
    ),
    (
        "foreign id delete",
        "DELETE",
        lambda v: f"/v1/voices/{v['bob']}",
        {},
        ALICE,
        404,
        "voice_not_found",
        "voice_id",
    ),
    ("missing key", "GET", "/v1/voices", {}, None, 401, "missing_api_key", None),
    ("wrong key", "POST", "/v1/audio/speech", {"json": SPEECH}, "sk-wrong", 401, "invalid_api_key", None),
    (
        "wrong key delete",
        "DELETE",
        lambda v: f"/v1/voices/{v['alice']}",
        {},
        "sk-wrong",
        401,
        "invalid_api_key",
        None,
    ),
    (
        "not bearer",
        "GET",
        "/v1/voices",
        {"headers": {"Authorization": f"Basic {ALICE}"}},
        None,
        401,
        "invalid_api_key",
        None,
    ),
    (
        "unknown job",
        "GET",
        "/v1/audio/speech/jobs/job_0123456789abcdef01234567",
        {},
        ALICE,
        404,
        "job_not_found",
        "job_id",
    ),
    (
        "design preview, empty description",
        "POST",
        "/v1/voices/design",
        {"json": {"instructions": " ", "input": "Hi."}},
        ALICE,
        400,
        "missing_required_parameter",
        "instructions",
    ),
    (
        "save design, name taken",
        "POST",
        "/v1/voices/from-design",
        {"json": {"instructions": "calm", "input": "Hi.", "name": "table-alice"}},
        ALICE,
        409,
        "voice_name_taken",
        "name",
    ),
    (
        "save design, no base name",
        "POST",
        "/v1/voices/from-design",
        {"json": {"instructions": "calm", "input": "Hi."}},
        ALICE,
        400,
        "missing_required_parameter",
        "name",
    ),
    (
        "body over the size cap",
        "POST",
        "/v1/audio/speech",
        {"json": speech(input="a" * 3_200_000)},
        ALICE,
        413,
        "request_too_large",
        None,
    ),
    (
        "ref_audio empty",
        "POST",
        "/v1/audio/speech",
        {"json": speech(voice="clone", ref_audio="")},
        ALICE,
        400,
        "empty_file",
        "ref_audio",
    ),
    (
        "ref_audio with a named voice",
        "POST",
        "/v1/audio/speech",
        {"json": speech(ref_audio=base64.b64encode(b"x").decode())},
        ALICE,
        400,
        "conflicting_voice",
        "voice",
    ),
    ("unknown route", "GET", "/v1/nothing", {}, ALICE, 404, "not_found", None),
]


def library_snapshot(server) -> tuple:
    files = sorted(p.name for p in (server.state.config.data_dir / "voices").iterdir())
    return server.state.library.count(), files


@pytest.mark.parametrize(
    "method,path,kwargs,key,status,code,param", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request(server, voices, method, path, kwargs, key, status, code, param):
    path = path(voices) if callable(path) else path
    kwargs = kwargs(voices) if callable(kwargs) else dict(kwargs)
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    before = library_snapshot(server)
    r = httpx.request(method, server.url + path, headers=headers, timeout=120, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert error["message"] and error["type"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert library_snapshot(server) == before
    assert server.state.pool.active == 0


def test_over_the_cap_the_client_still_reads_its_413(server):
    """An over-limit body is drained before the 413, so the client, still sending, gets the answer rather
    than a connection reset; with a declared length and chunked alike, and the next request works."""
    headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
    chunk = b" " * 65536

    def chunked():
        yield b'{"input": "'
        for _ in range(64):  # 4 MiB, over the ~2.9 MB cap
            yield chunk
        yield b'"}'

    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
        for body in (b"x" * 4_000_000, chunked()):
            r = c.post("/v1/audio/speech", content=body)
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get("/v1/voices").status_code == 200


def test_table_is_big_enough():
    assert len(CASES) >= 25


def test_queue_full_gives_429_with_retry_after(registry, tmp_path):
    from tests.server.conftest import ServerThread, make_config
    from utter_tts.server.app import create_app

    app = create_app(make_config(tmp_path, max_concurrency=1, max_queue=0, chunk_delay_s=1.5), registry)
    with ServerThread(app) as srv:
        headers = {"Authorization": f"Bearer {ALICE}"}
        with httpx.stream(
            "POST", srv.url + "/v1/audio/speech", json=SPEECH, headers=headers, timeout=60
        ) as r1:
            assert r1.status_code == 200
            r2 = httpx.post(srv.url + "/v1/audio/speech", json=SPEECH, headers=headers, timeout=60)
            assert r2.status_code == 429 and r2.headers["retry-after"] == "2"
            assert r2.json()["error"]["code"] == "queue_full"
            r1.read()


def test_not_ready_gives_503(tmp_path):
    from tests.server.conftest import ServerThread, make_config
    from utter_tts.server.app import create_app
    from utter_tts.server.registry import ModelRegistry

    app = create_app(make_config(tmp_path), ModelRegistry())  # nothing loaded yet
    with ServerThread(app) as srv:
        assert httpx.get(srv.url + "/health").status_code == 503
        r = httpx.post(
            srv.url + "/v1/audio/speech", json=SPEECH, headers={"Authorization": f"Bearer {ALICE}"}
        )
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "not_ready"


SECRET = "secret-detail-/srv/models/qwen"


def test_internal_fault_is_500_without_details(server, client, monkeypatch):
    """A genuine bug inside the server (here: the library's storage failing) must not leak its details."""

    def broken_list(owner):
        raise RuntimeError(SECRET)

    monkeypatch.setattr(server.state.library, "list", broken_list)
    r = client.get("/v1/voices")
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert SECRET not in r.text


def test_corrupt_voice_file_is_a_500_not_the_callers_fault(server, client, voices):
    path = server.state.config.data_dir / "voices" / f"{voices['alice']}.safetensors"
    good = path.read_bytes()
    try:
        path.write_bytes(b"garbage")
        server.state.library._cache.clear()
        r = client.post("/v1/audio/speech", json=speech(voice=voices["alice"]))
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "garbage" not in r.text and str(path) not in r.text
    finally:
        path.write_bytes(good)
