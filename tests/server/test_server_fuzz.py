"""Fuzz every text and number field of every route (the OpenAI-style API, the voice library, jobs, the
WebSocket and utter's routes) on one live server: arbitrary Unicode with lone surrogates and control
characters, huge and empty strings, every JSON type in every place. Never a 5xx, never a dropped
connection, never a session closed as an internal error, and the voice library left as it was."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import connect as ws_connect

from tests.server.conftest import ALICE, ServerThread, make_config, tone_wav
from utter_tts.serve import mount_on_server
from utter_tts.server.app import create_app

SURROGATE = re.compile("[\ud800-\udfff]")
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the huge strings
JSON = {"Content-Type": "application/json"}


def examples(n: int) -> settings:
    """n examples, the same ones every run (no example database), no per-example deadline."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )


# ---- values ---------------------------------------------------------------------------------------------
CHARS = st.one_of(
    st.characters(),  # any code point but surrogates
    st.characters(categories=["Cs"]),  # lone UTF-16 surrogates ("\ud800" in JSON)
    st.characters(categories=["Cc"]),  # NUL and the other control characters
    st.sampled_from(["\u0301", "\u200b", "\ufeff", "<|im_end|>", "<tts_pad>", " ", "\n", "."]),
)
SHORT_TEXT = st.lists(CHARS, max_size=60).map("".join)
TEXT = st.one_of(
    SHORT_TEXT,
    st.sampled_from(["", " ", "\t\n", "Hello there.", "e\u0301", "a" * 5_000, "\U0001f600" * 30_000]),
)
# Text holding at least one of what broke the server before: a lone surrogate, NUL, an escape character.
NASTY = st.tuples(
    SHORT_TEXT, st.sampled_from(["\ud800", "\udfff", "\ud83d", "\x00", "\x1b", "\x7f"]), SHORT_TEXT
).map("".join)
NUMBER = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),  # sent as NaN / Infinity, which Python's json reads
    st.sampled_from([0, 1, 2, 5, 0.5, 1.0, 4.0, 2**63, -1]),
)
SCALAR = st.one_of(TEXT, NUMBER, st.booleans(), st.none())
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(TEXT, SCALAR, max_size=2))
TEXT_VALUE = st.one_of(NASTY, st.one_of(TEXT, VALUE))  # half the time text that broke the server
NUMBER_VALUE = st.one_of(NUMBER, st.booleans(), VALUE)
ABSENT = object()


def mutated(valid: dict, texts: list[str], numbers: list[str] = ()) -> st.SearchStrategy[dict]:
    """`valid` with one of its text fields (`texts`) or number fields (`numbers`) replaced by a value of
    that kind gone wrong or of another JSON type, and maybe a second one changed or left out."""
    fields = [*texts, *numbers]

    def edit(field: str) -> st.SearchStrategy:
        return st.tuples(st.just(field), TEXT_VALUE if field in texts else NUMBER_VALUE)

    first = st.sampled_from(fields).flatmap(edit)
    second = st.one_of(st.none(), first, st.tuples(st.sampled_from(fields), st.just(ABSENT)))
    changes = st.tuples(first, second).map(lambda pair: dict(p for p in pair if p is not None))
    return changes.map(lambda c: {k: v for k, v in {**valid, **c}.items() if v is not ABSENT})


def dumps(body) -> bytes:
    """JSON as any client may send it: lone surrogates as \\ud800 escapes, NaN and Infinity as Python
    writes them."""
    return json.dumps(body).encode()


SAMPLING = [
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "subtalker_dosample",
    "subtalker_temperature",
    "subtalker_top_k",
    "subtalker_top_p",
]


# ---- the server ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(registry, tmp_path_factory):
    """All three model types, keys on, utter's routes mounted (keys on too)."""
    # two frames a request: the fuzz is about what the server accepts and refuses, not how long it speaks
    app = create_app(make_config(tmp_path_factory.mktemp("fuzz"), max_queue=32, max_new_tokens=2), registry)
    runner = mount_on_server(app, auth=True)
    with ServerThread(app) as srv:
        yield srv
    runner.close()


@pytest.fixture(scope="module")
def http(live):
    """One keep-alive connection for every request: a dropped connection fails the next request."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"Authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=120, limits=limits) as c:
        yield c


def library(live) -> tuple:
    """Rows and files of the voice library (both must come back to this after each request)."""
    files = sorted(p.name for p in (live.state.config.data_dir / "voices").iterdir())
    return live.state.library.count(), files


def send(http, live, method: str, path: str, **kw) -> httpx.Response:
    before = library(live)
    r = http.request(method, path, **kw)
    assert r.status_code < 500, r.text[:2000]
    assert r.headers.get("connection", "").lower() != "close", r.headers
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        assert (body.get("error") or {}).get("message") or body.get("detail"), body
        assert not SURROGATE.search(r.text)  # what the client reads is valid Unicode
    if r.status_code == 201 and path.startswith("/v1/voices"):  # a voice the fuzz made: remove it again
        assert http.delete(f"/v1/voices/{r.json()['id']}").status_code == 200
    assert library(live) == before
    return r


def settle(live) -> None:
    """Every generation slot is free again once the requests are answered (jobs cancelled)."""
    for job in list(live.state.jobs.jobs.values()):
        if job.task is not None:
            job.task.cancel()
    for _ in range(600):
        if live.state.pool.active == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{live.state.pool.active} generation slots still taken")


# ---- the OpenAI-style routes ---------------------------------------------------------------------------
SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": "wav"}
SPEECH_TEXTS = ["model", "input", "voice", "instructions", "response_format", "language", "stream_format"]
SPEECH_NUMBERS = ["speed", "seed", "sample_rate", *SAMPLING]
REF_AUDIO = base64.b64encode(tone_wav()).decode()
CLONE = {**SPEECH, "voice": "clone", "ref_audio": REF_AUDIO, "ref_text": "Hello there."}


@examples(100)
@given(
    st.one_of(
        mutated(SPEECH, SPEECH_TEXTS + ["ref_text"], SPEECH_NUMBERS),
        mutated(CLONE, ["ref_audio", "ref_text", "voice", "input", "language"]),
    )
)
def _speech(http, live, body):
    send(http, live, "POST", "/v1/audio/speech", content=dumps(body), headers=JSON)


def test_speech(http, live):
    _speech(http, live)
    settle(live)


DESIGN = {"instructions": "A calm voice.", "input": "Hi.", "language": "auto"}
DESIGN_TEXTS = ["instructions", "input", "language", "model", "response_format"]
DESIGN_NUMBERS = ["seed", "sample_rate", "temperature", "max_new_tokens"]


@examples(50)
@given(
    st.one_of(
        mutated(DESIGN, DESIGN_TEXTS, DESIGN_NUMBERS).map(lambda b: ("/v1/voices/design", b)),
        mutated({**DESIGN, "name": "fuzzed"}, [*DESIGN_TEXTS, "name", "clone_model"], DESIGN_NUMBERS).map(
            lambda b: ("/v1/voices/from-design", b)
        ),
    )
)
def _design(http, live, request):
    path, body = request
    send(http, live, "POST", path, content=dumps(body), headers=JSON)


def test_voice_design(http, live):
    _design(http, live)
    settle(live)


@examples(25)
@given(st.dictionaries(st.sampled_from(["name", "ref_text", "model"]), st.one_of(NASTY, TEXT), max_size=3))
def _upload(http, live, fields):
    # form fields travel as UTF-8: a lone surrogate cannot be sent, so it goes as a browser sends it
    data = {k: v.encode("utf-8", "replace").decode("utf-8") for k, v in fields.items()}
    send(http, live, "POST", "/v1/voices", files={"file": ("r.wav", tone_wav(), "audio/wav")}, data=data)


def test_voice_upload(http, live):
    _upload(http, live)
    settle(live)


ID_ROUTES = [
    "GET /v1/voices/{}",
    "DELETE /v1/voices/{}",
    "GET /v1/audio/speech/jobs/{}",
    "GET /v1/audio/speech/jobs/{}/content",
    "POST /v1/audio/speech/jobs/{}/cancel",
    "DELETE /v1/audio/speech/jobs/{}",
]


@examples(30)
@given(st.one_of(NASTY, SHORT_TEXT), st.sampled_from(ID_ROUTES))
def _ids(http, live, text, route):
    method, path = route.split(" ")
    ident = quote(text.encode("utf-8", "surrogatepass"), safe="")  # any bytes, percent-encoded
    send(http, live, method, path.format(ident or "x"))


def test_path_ids(http, live):
    _ids(http, live)


@examples(30)
@given(mutated({**SPEECH, "input": "One. Two."}, SPEECH_TEXTS, ["speed", "seed", "max_new_tokens"]))
def _jobs(http, live, body):
    r = send(http, live, "POST", "/v1/audio/speech/jobs", content=dumps(body), headers=JSON)
    if r.status_code == 202:
        assert http.delete(f"/v1/audio/speech/jobs/{r.json()['id']}").status_code == 200


def test_long_jobs(http, live):
    """A job whose text the checks refuse is refused at submission (4xx), not failed later."""
    _jobs(http, live)
    settle(live)


# ---- the WebSocket ---------------------------------------------------------------------------------------
def connect(live):
    url = f"ws://127.0.0.1:{live.port}/v1/audio/speech/stream"
    return ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30)


MESSAGE = st.one_of(
    TEXT_VALUE.map(lambda v: json.dumps({"type": "input.append", "text": v})),
    VALUE.map(lambda v: json.dumps({"type": v})),
    NASTY,  # not JSON at all (a lone surrogate cannot travel in a text frame: it goes replaced)
    st.binary(max_size=20),
).map(lambda m: m.encode("utf-8", "replace").decode("utf-8") if isinstance(m, str) else m)


@examples(30)
@given(st.lists(MESSAGE, min_size=1, max_size=3), st.sampled_from(["sentence", "live"]))
def _ws_messages(live, messages, text_mode):
    """Each bad message gets an error event (never an internal error); a valid sentence after them is
    still spoken and the session ends normally (1000)."""
    events = []
    with connect(live) as ws:
        start = {"type": "session.start", "voice": "ryan", "response_format": "pcm", "text_mode": text_mode}
        ws.send(json.dumps(start))
        assert json.loads(ws.recv(timeout=60))["type"] == "session.started"
        tail = [json.dumps({"type": "input.append", "text": " Still here."}), '{"type": "input.flush"}']
        for m in [*messages, *tail]:
            ws.send(m)
        while not events or events[-1]["type"] != "session.done":
            msg = ws.recv(timeout=120)
            if isinstance(msg, str):
                events.append(json.loads(msg))
        with pytest.raises(ConnectionClosedOK):  # the server ends the session itself, with 1000
            ws.recv(timeout=30)
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert all(e["type"] != "server_error" for e in errors), errors
    if text_mode == "sentence":
        assert any(e["type"] == "sentence.start" and "Still here." in e["text"] for e in events), events
    else:
        assert events[-1]["type"] == "session.done" and events[-1]["audio_seconds"] > 0, events


def test_websocket_messages_keep_the_session(live):
    _ws_messages(live)
    settle(live)


WS_START = {"type": "session.start", "voice": "ryan", "response_format": "pcm"}


@examples(30)
@given(
    mutated(
        WS_START,
        ["model", "voice", "instructions", "response_format", "language", "ref_audio", "ref_text"],
        ["speed", "seed", "sample_rate", "temperature", "max_new_tokens"],
    )
)
def _ws_start(live, start):
    with connect(live) as ws:
        ws.send(json.dumps(start))
        event = json.loads(ws.recv(timeout=60))
        if event["type"] == "error":  # a refused start: the reason, then a policy close (never 1011)
            assert event["error"]["type"] != "server_error", event
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            assert ws.close_code == 1008, ws.close_code
        else:
            assert event["type"] == "session.started", event


def test_websocket_session_start(live):
    _ws_start(live)
    settle(live)


# ---- utter's routes --------------------------------------------------------------------------------------
COMPAT = {
    "/clone": (
        {"text": "Hi.", "language": "English", "ref_audio_base64": REF_AUDIO, "ref_text": "W."},
        ["text", "language", "ref_text", "ref_audio_base64", "ref_audio_url"],
    ),
    "/clone-batch": (
        {
            "texts": ["A.", "B."],
            "languages": ["English", "Auto"],
            "ref_audio_base64": REF_AUDIO,
            "ref_text": "W.",
        },
        ["texts", "languages", "ref_text", "ref_audio_base64", "ref_audio_url"],
    ),
    "/design": (
        {"text": "Hi.", "language": "English", "instruct": "A calm voice."},
        ["text", "language", "instruct"],
    ),
    "/submit-job": (
        {"text": "Hi. There.", "language": "Auto", "ref_audio_base64": REF_AUDIO, "ref_text": "W."},
        ["text", "language", "ref_text", "ref_audio_base64"],
    ),
    "/job-cancel": ({"job_id": "job_0123456789abcdef01234567"}, ["job_id"]),
}


@examples(30)
@given(st.data())
def _compat(http, live, route, data):
    valid, texts = COMPAT[route]
    body = data.draw(mutated(valid, texts, ["max_new_tokens"]))
    for key, other in (("texts", "B."), ("languages", "Auto")):  # a bad string goes inside the list
        if route == "/clone-batch" and isinstance(body.get(key), str):
            body = {**body, key: [body[key], other]}
    send(http, live, "POST", route, content=dumps(body), headers=JSON)


@examples(25)
@given(st.sampled_from(["/job-status", "/job-result"]), st.one_of(NASTY, SHORT_TEXT))
def _compat_reads(http, live, route, job_id):
    send(http, live, "GET", route, params={"job_id": job_id.encode("utf-8", "replace").decode()})


@pytest.mark.parametrize("route", list(COMPAT))
def test_utter_routes(http, live, route):
    _compat(http, live, route)
    settle(live)


def test_utter_job_reads(http, live):
    _compat_reads(http, live)
