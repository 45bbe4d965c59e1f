"""What agent frameworks' OpenAI TTS plugins (LiveKit Agents, Pipecat) send and expect: OpenAI's newer
voice names, dated model names, an x-request-id on every response, and instructions sent with every
request, which a voice that cannot take them ignores (saying so) instead of refusing the request."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import string
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_connect

from tests.server.conftest import ALICE, BOB, ServerThread, make_config, session_rest, tone_wav
from utter_tts.errors import InvalidInput
from utter_tts.server.app import create_app
from utter_tts.server.openai_errors import request_id
from utter_tts.server.planner import OPENAI_VOICES, Planner
from utter_tts.server.registry import ModelRegistry
from utter_tts.service.inline_voices import InlineVoices
from utter_tts.voices.library import VoiceLibrary

# The same examples every run, no deadline, no health checks (the session server is shared by all)
EXAMPLES = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
README = Path(__file__).resolve().parents[2] / "README.md"
# The preset speakers of the real 1.7B CustomVoice checkpoint (the tiny test one has only three).
REAL_SPEAKERS = ["vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee"]


@pytest.fixture
def real_speakers_planner(tmp_path) -> Planner:
    """A planner over a stand-in CustomVoice model with the real checkpoint's speakers: casting only
    reads a model's type, speakers and languages."""
    registry = ModelRegistry()
    registry.add("custom", SimpleNamespace(model_type="custom_voice", speakers=REAL_SPEAKERS), "custom_voice")
    return Planner(registry, VoiceLibrary(tmp_path), InlineVoices(4), 2000, 20.0, None)


def test_the_readme_table_is_the_openai_voice_map():
    table = re.search(
        r"^\| OpenAI voice \|(.*)\|\n\|[- |]+\|\n\| preset speaker \|(.*)\|$", README.read_text(), re.M
    )
    assert table is not None
    names, speakers = ([cell.strip() for cell in row.split("|")] for row in table.groups())
    assert dict(zip(names, speakers, strict=True)) == OPENAI_VOICES


@pytest.mark.parametrize("name", sorted(OPENAI_VOICES))
def test_every_openai_voice_is_a_speaker_of_the_real_custom_voice_model(real_speakers_planner, name):
    casting = real_speakers_planner.cast(
        "alice", model="gpt-4o-mini-tts", voice=name.upper(), instructions=None, language="auto"
    )
    assert casting.mode == "speak" and casting.speaker == OPENAI_VOICES[name]


def test_a_saved_voice_named_like_an_openai_voice_is_reached_by_that_name(registry, tmp_path):
    """For frameworks that send only OpenAI's names (Pipecat): the key's saved voice named "alloy" is what
    voice="alloy" speaks, over the preset speaker the name maps to; other keys still get the preset."""
    app = create_app(make_config(tmp_path), registry)
    body = {"model": "gpt-4o-mini-tts", "input": "Hi.", "response_format": "pcm", "seed": 7}
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        alice, bob = ({"Authorization": f"Bearer {key}"} for key in (ALICE, BOB))
        preset = c.post("/v1/audio/speech", json={**body, "voice": "alloy"}, headers=alice)
        r = c.post(
            "/v1/voices",
            files={"file": ("r.wav", tone_wav(), "audio/wav")},
            data={"name": "alloy"},
            headers=alice,
        )
        assert r.status_code == 201, r.text
        saved = c.post("/v1/audio/speech", json={**body, "voice": r.json()["id"]}, headers=alice)
        by_name = c.post("/v1/audio/speech", json={**body, "voice": "alloy"}, headers=alice)
        others = c.post("/v1/audio/speech", json={**body, "voice": "alloy"}, headers=bob)
    assert preset.status_code == saved.status_code == by_name.status_code == others.status_code == 200
    assert by_name.content == saved.content != preset.content
    assert others.content == preset.content


def test_the_newer_openai_voices_are_known(client):
    # marin (female) and cedar (male), OpenAI's newest: Serena, and Aiden, an English speaker
    assert OPENAI_VOICES["marin"] == "serena" and OPENAI_VOICES["cedar"] == "aiden"
    # The tiny checkpoint lacks both speakers: the server names the mapping instead of "unknown voice".
    for name in ("marin", "cedar"):
        r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": name})
        assert r.status_code == 400, r.text
        assert f"maps to {OPENAI_VOICES[name]!r}" in r.json()["error"]["message"]


# ---- dated model names ---------------------------------------------------------------------------------
OPENAI_MODELS = ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
TWO_DIGITS = st.integers(0, 99).map("{:02d}".format)
# Suffixes outside the rule: a month or day out of range, a version of other than four digits, ...
NOT_A_DATE = st.one_of(
    st.builds(
        "{}-{}-{}".format,
        st.dates().map(lambda d: f"{d.year:04d}"),
        st.sampled_from(["00", "13", "99"]),
        TWO_DIGITS,
    ),
    st.builds(
        "{}-{}".format, st.dates().map(lambda d: d.strftime("%Y-%m")), st.sampled_from(["00", "32", "45"])
    ),
    st.integers(0, 999).map(str),
    st.integers(10_000, 10**8).map(str),
    st.dates().map(lambda d: d.strftime("%Y%m%d")),
    st.sampled_from(["foo", "latest", "2025-3-20", "2025-03-20-1106", "\u0661\u0661\u0660\u0666", ""]),
)


def cast_model(server, model: str) -> str:
    """The id of the model that a request naming `model` for preset speaker ryan gets."""
    casting = server.state.planner.cast(
        "compat", model=model, voice="ryan", instructions=None, language="auto"
    )
    return casting.model.id


@settings(max_examples=60, **EXAMPLES)
@given(
    st.sampled_from(OPENAI_MODELS),
    st.one_of(st.dates().map(date.isoformat), st.integers(0, 9999).map("{:04d}".format)),
    st.booleans(),
)
def test_a_dated_openai_model_name_is_that_name(server, name, suffix, upper):
    """tts-1-1106, gpt-4o-mini-tts-2025-03-20: any of OpenAI's TTS names plus -YYYY-MM-DD or -NNNN means
    what the plain name means (the loaded model the voice needs), in any case."""
    model = f"{name}-{suffix}"
    assert cast_model(server, model.upper() if upper else model) == cast_model(server, name) == "custom_voice"


@settings(max_examples=60, **EXAMPLES)
@given(st.sampled_from([*OPENAI_MODELS, "auto", "utter-tts", "qwen3-tts", "tts-2", "gpt-4o-tts"]), NOT_A_DATE)
def test_other_suffixes_are_unknown_models(server, name, suffix):
    with pytest.raises(InvalidInput) as refused:
        cast_model(server, f"{name}-{suffix}")
    assert refused.value.code == "model_not_found"


@pytest.mark.parametrize(
    "name", ["gpt-4o-mini-tts-2025-12-15", "gpt-4o-mini-tts-2025-03-20", "tts-1-1106", "tts-1-hd-1106"]
)
def test_openai_dated_model_names_over_http(client, name):
    r = client.post(
        "/v1/audio/speech", json={"model": name, "input": "Hi.", "voice": "ryan", "response_format": "pcm"}
    )
    assert r.status_code == 200 and r.headers["x-utter-model"] == "custom_voice" and r.content


@pytest.mark.parametrize(
    "name", ["tts-2", "gpt-4o-mini-tts-foo", "tts-1-2025-13-45", "tts-1-106", "auto-2025-03-20"]
)
def test_names_outside_the_rule_stay_unknown_over_http(client, name):
    r = client.post(
        "/v1/audio/speech", json={"model": name, "input": "Hi.", "voice": "ryan", "response_format": "pcm"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---- x-request-id --------------------------------------------------------------------------------------
TOKEN_CHARS = string.ascii_letters + string.digits + "._:@/+=-"
NEW_ID = re.compile(r"req_[0-9a-f]{32}")


@settings(max_examples=300, **EXAMPLES)
@given(
    st.one_of(
        st.text(TOKEN_CHARS, min_size=1, max_size=140),
        st.text(),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),  # header bytes as Starlette reads them
        st.tuples(st.text(TOKEN_CHARS), st.sampled_from(" \t\r\n\x00\x7f\"'<>;,é"), st.text(TOKEN_CHARS)).map(
            "".join
        ),
    )
)
def test_a_request_id_is_the_clients_plain_token_or_a_new_one(sent):
    rid = request_id(sent)
    plain = 1 <= len(sent) <= 128 and all(c in TOKEN_CHARS for c in sent)
    assert rid == sent if plain else NEW_ID.fullmatch(rid)


def raw_request(port: int, head: bytes) -> dict[str, str]:
    """Send a request as bytes (an HTTP client refuses control characters in headers); its response's
    status and headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head + b"Host: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, *lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return {"status": status.split()[1], **{k.lower(): v for k, v in (x.split(": ", 1) for x in lines)}}


def test_every_response_carries_a_request_id(client):
    echoed = client.get("/health", headers={"x-request-id": "lk-8f2e:turn/1"})
    assert echoed.status_code == 200 and echoed.headers["x-request-id"] == "lk-8f2e:turn/1"
    first, second = client.get("/v1/models"), client.get("/v1/models")
    assert NEW_ID.fullmatch(first.headers["x-request-id"]) and NEW_ID.fullmatch(
        second.headers["x-request-id"]
    )
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_a_websocket_handshake_carries_the_request_id(server):
    """The WebSocket's handshake names its session as HTTP responses do: the client's plain id echoed,
    else a new one (LiveKit and Pipecat log it)."""
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    auth = {"Authorization": f"Bearer {ALICE}"}
    with ws_connect(url, additional_headers={**auth, "x-request-id": "ws-turn/7"}, open_timeout=30) as ws:
        assert ws.response.headers["x-request-id"] == "ws-turn/7"
    with ws_connect(url, additional_headers={**auth, "x-request-id": "bad id"}, open_timeout=30) as ws:
        assert NEW_ID.fullmatch(ws.response.headers["x-request-id"])


def test_a_streamed_response_carries_the_request_id(client):
    body = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": "pcm"}
    with client.stream("POST", "/v1/audio/speech", json=body, headers={"x-request-id": "stream-1"}) as r:
        assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
        assert r.headers["x-request-id"] == "stream-1" and b"".join(r.iter_bytes())


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("GET", "/no/such/route", {}, 404),
        ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "", "voice": "ryan"}}, 400),
        ("POST", "/v1/audio/speech", {"json": {"model": "tts-2", "input": "Hi.", "voice": "ryan"}}, 404),
        ("GET", "/v1/voices", {"headers": {"Authorization": "Bearer sk-wrong"}}, 401),
        ("POST", "/v1/audio/speech", {"content": b"x" * 3_000_000}, 413),
    ],
)
def test_an_error_response_carries_the_request_id(client, method, path, kwargs, status):
    headers = {"x-request-id": f"err-{status}", **kwargs.pop("headers", {})}
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status and r.headers["x-request-id"] == f"err-{status}"


@pytest.mark.parametrize(
    "value", [b"a" * 129, b"ab\x01cd", b"ab\x7f", b"caf\xc3\xa9", b"a b", b'"quoted"', b"x;y"]
)
def test_a_hostile_request_id_is_replaced(server, value):
    headers = raw_request(server.port, b"GET /health HTTP/1.1\r\nx-request-id: " + value + b"\r\n")
    assert headers["status"] == "200" and NEW_ID.fullmatch(headers["x-request-id"])
    sane = raw_request(server.port, b"GET /health HTTP/1.1\r\nx-request-id: " + b"a" * 128 + b"\r\n")
    assert sane["x-request-id"] == "a" * 128


def test_an_internal_error_carries_the_request_id_into_the_response_and_the_log(registry, tmp_path, caplog):
    app = create_app(make_config(tmp_path), registry)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with ServerThread(app) as srv, caplog.at_level(logging.ERROR, "utter_tts.server"):
        r = httpx.get(f"{srv.url}/boom", headers={"x-request-id": "boom-7"}, timeout=60)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "boom-7"
    assert any("boom-7" in rec.getMessage() for rec in caplog.records if rec.name == "utter_tts.server")


# ---- instructions a voice cannot take ------------------------------------------------------------------
CLONE_IGNORES = "cloned voice: the Base model takes no instructions"
SMALL_IGNORES = "preset speaker of a 0.6B CustomVoice model, which takes no instructions"
STYLE = "Speak cheerfully, a little faster."


@pytest.fixture(scope="module")
def saved_voice(server):
    headers = {"Authorization": f"Bearer {ALICE}"}
    r = httpx.post(
        f"{server.url}/v1/voices",
        headers=headers,
        files={"file": ("r.wav", tone_wav(), "audio/wav")},
        data={"name": "compat-clone", "ref_text": "hello there"},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    yield r.json()["id"]
    httpx.delete(f"{server.url}/v1/voices/{r.json()['id']}", headers=headers, timeout=60)


def speak(client, **fields) -> httpx.Response:
    body = {"model": "tts-1", "input": "Hello there.", "response_format": "pcm", "seed": 7, **fields}
    r = client.post("/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    return r


def clone_fields(kind: str, saved_voice: str) -> dict:
    if kind == "saved":
        return {"voice": saved_voice}
    return {"voice": "clone", "ref_audio": base64.b64encode(tone_wav()).decode(), "ref_text": "hello there"}


@pytest.mark.parametrize("kind", ["saved", "inline"])
def test_a_cloned_voice_ignores_instructions_and_says_so(client, saved_voice, kind):
    """LiveKit and Pipecat send their instructions with every request: a clone (saved or inline) speaks
    as it would without them, and the response says they were dropped, and why."""
    plain = speak(client, **clone_fields(kind, saved_voice))
    styled = speak(client, **clone_fields(kind, saved_voice), instructions=STYLE)
    assert styled.headers["x-utter-instructions-ignored"] == CLONE_IGNORES
    assert "x-utter-instructions-ignored" not in plain.headers
    assert styled.content == plain.content and len(plain.content) > 0


def test_a_small_custom_voice_models_speakers_ignore_instructions(client, registry, monkeypatch):
    """The 0.6B CustomVoice refuses instructions: its preset speakers speak without them. (The tiny
    checkpoint is a 1.7B one; told it is a 0.6B, it refuses an instruction as the real one does.)"""
    styled_big = speak(client, voice="ryan", instructions=STYLE)
    assert "x-utter-instructions-ignored" not in styled_big.headers  # the 1.7B takes them
    monkeypatch.setattr(registry.models["custom_voice"].tts.pipeline.config, "tts_model_size", "0b6")
    plain = speak(client, voice="ryan")
    styled = speak(client, voice="ryan", instructions=STYLE)
    assert styled.headers["x-utter-instructions-ignored"] == SMALL_IGNORES
    assert styled.content == plain.content and len(plain.content) > 0


def test_design_still_needs_instructions(client):
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "design"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "instructions"


def test_a_websocket_session_says_which_instructions_it_ignores(server, saved_voice):
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    cases = [(saved_voice, STYLE, CLONE_IGNORES), (saved_voice, None, None), ("ryan", STYLE, None)]
    for voice, instructions, ignored in cases:
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
            start = {"type": "session.start", "voice": voice, "instructions": instructions, "seed": 3}
            ws.send(json.dumps(start))
            started = json.loads(ws.recv(timeout=60))
            assert started["type"] == "session.started", started
            assert started.get("instructions_ignored") == ignored
            ws.send(json.dumps({"type": "input.append", "text": "Hello there."}))
            ws.send(json.dumps({"type": "input.flush"}))
            audio, events = session_rest(ws)
            assert events[-1]["type"] == "session.done" and audio


def test_a_job_says_which_instructions_it_ignores(client, saved_voice):
    """The 202 of a job carries the same header; its audio is that of the speech without instructions."""
    body = {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": saved_voice,
        "response_format": "pcm",
        "seed": 7,
    }
    r = client.post("/v1/audio/speech/jobs", json={**body, "instructions": STYLE})
    assert r.status_code == 202 and r.headers["x-utter-instructions-ignored"] == CLONE_IGNORES
    job, deadline = r.json(), time.monotonic() + 120
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/audio/speech/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    content = client.get(f"/v1/audio/speech/jobs/{job['id']}/content").content
    assert content == speak(client, voice=saved_voice).content
    client.delete(f"/v1/audio/speech/jobs/{job['id']}")
