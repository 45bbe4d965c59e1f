"""Soak test: a live utter-tts server under mixed load for a set time, with its memory, latency and outcomes.

Starts `utter-tts serve --compat` in its own process on 127.0.0.1 (tiny random checkpoints unless
`--models` names others), or points at a running server (`--url`, `--api-key`, `--pid` to sample it), and
runs `--clients` workers for `--minutes`. Each worker walks a shuffled deck of scenarios:
  speech in every response format, whole and streamed; SSE; WebSocket sessions (live text appends and
  sentence mode); jobs (submit, poll, fetch, delete, or cancel); voice library writes (upload a clip,
  speak with it, delete it, check it is gone); utter's routes (/clone, /clone-batch, /design, the job
  routes); clients that leave after the first chunk (HTTP, SSE, WebSocket); malformed requests, which
  must get a 4xx.
Every few seconds it samples the server process (resident memory, threads, open files, connections) and
its queue. It writes OUT/soak.json (settings, outcomes and latency per kind and per time window, the
samples, failures with details, server version, machine) and OUT/soak.png (memory and latency over time).

  python bench/soak.py --minutes 30 --clients 4 --out /tmp/soak
  python bench/soak.py --url http://gpu-host:8000 --api-key sk-... --pid 1234 --minutes 60 --clients 32

Exit status 1 on any failure: a 5xx, a status a request should not get, a broken connection, a wrong body,
the server dying, slots still busy after the load, errors in the started server's log, or resident memory
growing past --max-rss-growth-mib.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("wav", "flac", "mp3", "opus", "aac", "pcm")
OUTCOMES = ("ok", "expected_4xx", "unexpected", "exception", "busy")
TEXTS = (
    "Hello there, nice to meet you.",
    "The quick brown fox jumps over the lazy dog.",
    "It is a bright, cold day in April.",
    "Please call me back when you can.",
    "Soak tests find the slow leaks.",
)
LIVE_TEXTS = ("Hello there my friend.", "This is a live test.", "Words arrive one by one.")
JOB_TEXT = "First, a short sentence. Then a second one. And a third, to finish."
REF_TEXT = "A tone that stands in for a recorded voice."
DESIGN = "A calm, deep narrator with a warm voice."
# Groups of kinds whose latencies mean the same thing (per window, and on the plot).
GROUPS = {
    "speech": "speech, whole file",
    "stream": "speech streamed (chunked, SSE)",
    "websocket": "WebSocket session",
    "job": "job to its audio (ours, utter's)",
    "utter": "utter's /clone, /clone-batch, /design",
    "voice": "voice upload/design and use",
    "cancel": "job submitted then cancelled",
    "leave": "client leaving after the first chunk",
    "malformed": "malformed request",
}
PLOT_TOTAL = ("speech", "stream", "websocket", "job", "utter", "voice")
PLOT_TTFB = ("stream", "websocket", "leave")


# ---- outcomes ------------------------------------------------------------------------------------------
class Unexpected(Exception):
    """A valid request got a status or a body it should not have."""

    def __init__(self, step: str, status: int | None, body: str):
        super().__init__(f"{step}: {status} {body}")
        self.step, self.status, self.body = step, status, body


class Busy(Exception):
    """429: the server shed the request (queue full, job limit)."""

    def __init__(self, step: str, body: str):
        super().__init__(f"{step}: 429 {body}")
        self.step, self.body = step, body


def check(resp: httpx.Response, step: str, want: tuple[int, ...] = (200,)) -> httpx.Response:
    if resp.status_code in want:
        return resp
    try:
        body = resp.text[:500]
    except httpx.ResponseNotRead:  # a stream nobody read: its status is what counts
        body = ""
    if resp.status_code == 429:
        raise Busy(step, body)
    raise Unexpected(step, resp.status_code, body)


def looks_like(fmt: str, data: bytes) -> bool:
    """Whether `data` starts as a file of `fmt` does (a cheap check that the body is audio, not an error)."""
    if not data:
        return False
    if fmt == "wav":
        return data[:4] == b"RIFF"
    if fmt == "flac":
        return data[:4] == b"fLaC"
    if fmt == "opus":
        return data[:4] == b"OggS"
    if fmt == "mp3":
        return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    if fmt == "aac":
        return len(data) > 1 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0
    return True  # pcm: raw samples, anything goes (its length is checked where the whole body is read)


@dataclass
class Timing:
    start: float
    first: float | None = None

    def first_byte(self) -> None:
        if self.first is None:
            self.first = time.monotonic()


class Recorder:
    """Every finished scenario's outcome and latency, and the failures' details (thread-safe)."""

    def __init__(self, t0: float, max_details: int = 200):
        self.t0 = t0
        self.lock = threading.Lock()
        self.records: list[tuple[float, str, str, float | None, float]] = []
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.malformed: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[dict] = []
        self.failure_count = 0
        self.max_details = max_details

    def record(self, kind: str, outcome: str, timing: Timing, end: float, status: int | None) -> None:
        ttfb = None if timing.first is None else timing.first - timing.start
        with self.lock:
            self.records.append((timing.start - self.t0, kind, outcome, ttfb, end - timing.start))
            self.statuses[kind][str(status)] += 1

    def fail(self, kind: str, what: str, **details: Any) -> None:
        with self.lock:
            self.failure_count += 1
            if len(self.failures) < self.max_details:
                self.failures.append(
                    {"t_s": round(time.monotonic() - self.t0, 3), "kind": kind, "what": what, **details}
                )

    def done(self) -> int:
        with self.lock:
            return len(self.records)


# ---- what the server offers ----------------------------------------------------------------------------
@dataclass
class Caps:
    """What the server under test can do, read from it before the load starts."""

    version: str
    model_types: set[str]
    speakers: list[str]
    compat: bool
    auth: bool
    health: dict


def discover(url: str, key: str | None) -> Caps:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        health = c.get("/health").json()
        version = c.get("/openapi.json").json().get("info", {}).get("version", "unknown")
        models = check(c.get("/v1/models"), "GET /v1/models").json()["data"]
        voices = check(c.get("/v1/voices"), "GET /v1/voices").json()
        languages = c.get("/languages")
        compat = languages.status_code == 200 and "languages" in languages.json()
        auth = httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
    return Caps(
        version=version,
        model_types={m.get("model_type") for m in models},
        speakers=[p["name"] for p in voices.get("presets", [])],
        compat=compat,
        auth=auth,
        health=health,
    )


# ---- the server under test -----------------------------------------------------------------------------
class OwnServer:
    """`utter-tts serve --compat` in a subprocess on a free port of 127.0.0.1, its log in a file."""

    def __init__(self, args, keys: list[str], log_path: Path):
        self.args = args
        self.keys = keys
        self.log_path = log_path
        self.tmp = Path(tempfile.mkdtemp(prefix="utter-soak-"))
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.models: list[str] = []

    def env(self) -> dict[str, str]:
        # A checkout runs without installing: its src goes first on the path (an install works too).
        path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
        return dict(os.environ, PYTHONPATH=path, UTTER_TTS_API_KEYS=",".join(self.keys))

    def build_models(self) -> list[str]:
        if self.args.models:
            return list(self.args.models)
        out = []
        for kind in ("base", "voice_design", "custom_voice"):
            folder = self.tmp / "ckpt" / kind
            cmd = [sys.executable, "-m", "utter_tts.demo", str(folder), "--shape", "tiny-1.7b"]
            subprocess.run([*cmd, "--model-type", kind], env=self.env(), check=True, capture_output=True)
            out.append(str(folder))
        return out

    def start(self) -> None:
        self.models = self.build_models()
        port = free_port()
        cmd = [sys.executable, "-m", "utter_tts.cli", "serve", *self.models]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(self.tmp / "data")]
        cmd += ["--log-level", self.args.server_log_level, "--compat"]
        # Room for every client's requests: a 429 here would be our configuration, not the server's fault.
        cmd += ["--max-queue", str(max(16, 4 * self.args.clients))]
        if self.args.max_new_tokens is not None:
            cmd += ["--max-new-tokens", str(self.args.max_new_tokens)]
        if not self.args.models:
            cmd += ["--device", "cpu", "--dtype", "float32"]
        cmd += [a for extra in self.args.server_arg for a in shlex.split(extra)]
        self.cmd = cmd
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.args.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not healthy after {self.args.start_timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL after 30 s; the exit status (None if killed by us)."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            else:
                code = self.proc.returncode
            self.log.close()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return code


def free_port() -> int:
    """A free TCP port of 127.0.0.1 (closed again before the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- process samples -----------------------------------------------------------------------------------
class ProcessProbe:
    """Resident memory, threads, open files and TCP connections of one process: psutil when installed,
    else /proc (Linux)."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            import psutil

            self.proc = psutil.Process(pid)
            self.proc.cpu_percent()  # the first call starts the interval the next one measures
        except ImportError:
            self.proc = None

    def sample(self) -> dict[str, Any]:
        if self.proc is not None:
            with self.proc.oneshot():
                out = {
                    "rss_mib": self.proc.memory_info().rss / 2**20,
                    "threads": self.proc.num_threads(),
                    "fds": self.proc.num_fds(),
                    "cpu_percent": self.proc.cpu_percent(),
                }
            try:
                out["connections"] = len(self.proc.net_connections(kind="tcp"))
            except Exception:  # some systems refuse another process's connections
                out["connections"] = None
            return out
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
            "cpu_percent": None,
            "connections": None,
        }


class Sampler(threading.Thread):
    """Every `every` seconds: the process's figures (when there is one to probe) and /health's queue."""

    def __init__(self, url: str, probe: ProcessProbe | None, proc, recorder: Recorder, every: float):
        super().__init__(daemon=True, name="soak-sampler")
        self.url, self.probe, self.proc, self.recorder, self.every = url, probe, proc, recorder, every
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.died: str | None = None

    def take(self) -> None:
        s: dict[str, Any] = {"t_s": round(time.monotonic() - self.recorder.t0, 3)}
        if self.proc is not None and self.proc.poll() is not None:
            self.died = f"server exited with status {self.proc.returncode}"
            return
        if self.probe is not None:
            try:
                s.update(
                    {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.probe.sample().items()}
                )
            except Exception as e:  # the process went away between two looks
                self.died = f"server process unreadable: {e!r}"
                return
        try:
            queue = httpx.get(f"{self.url}/health", timeout=10).json().get("queue", {})
            s["queue_active"], s["queue_waiting"] = queue.get("active"), queue.get("waiting")
        except Exception:
            s["queue_active"] = s["queue_waiting"] = None
        s["requests_done"] = self.recorder.done()
        self.samples.append(s)

    def run(self) -> None:
        while not self.stop.is_set() and self.died is None:
            self.take()
            self.stop.wait(self.every)


# ---- scenarios -----------------------------------------------------------------------------------------
def tone_wav(seconds: float, freq: float, sr: int = 16000, silent: bool = False) -> bytes:
    """A voiced-ish harmonic tone as 16-bit WAV: reference audio that passes the server's checks."""
    t = np.arange(int(sr * seconds)) / sr
    x = sum(0.2 / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, 6))
    pcm = (np.zeros_like(t) if silent else x * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


@dataclass
class Worker:
    """One client: its key, HTTP connection pool, random source and the server's capabilities."""

    index: int
    url: str
    key: str | None
    caps: Caps
    recorder: Recorder
    max_new_tokens: int | None
    timeout: float
    rng: random.Random
    ref_wav: bytes = b""
    http: httpx.Client = field(init=False)
    serial: int = 0
    serial_bad: int = 0

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout)
        self.ref_wav = tone_wav(1.5, 150 + 20 * self.index)
        self.ref_b64 = base64.b64encode(self.ref_wav).decode()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    @property
    def ws_url(self) -> str:
        return (
            self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
            + "/v1/audio/speech/stream"
        )

    def name(self, what: str) -> str:
        self.serial += 1
        return f"soak-{what}-{self.index}-{self.serial}-{self.rng.randrange(10**6)}"

    def sampling(self) -> dict[str, Any]:
        return {} if self.max_new_tokens is None else {"max_new_tokens": self.max_new_tokens}

    def voice_fields(self) -> dict[str, Any]:
        """A valid voice for speech: a preset speaker (or OpenAI's name for one), an inline clone or a
        designed voice, whichever the loaded models allow."""
        choices = []
        if "custom_voice" in self.caps.model_types:
            choices += [{"voice": self.rng.choice(self.caps.speakers or ["alloy"])}, {"voice": "alloy"}]
        if "base" in self.caps.model_types:
            choices.append({"voice": "clone", "ref_audio": self.ref_b64, "ref_text": REF_TEXT})
        if "voice_design" in self.caps.model_types:
            choices.append({"voice": "design", "instructions": DESIGN})
        return self.rng.choice(choices)

    def speech_body(self, fmt: str, **extra: Any) -> dict[str, Any]:
        body = {"model": "tts-1", "input": self.rng.choice(TEXTS), "response_format": fmt}
        body.update(self.voice_fields())
        body.update(self.sampling())
        if self.rng.random() < 0.2:
            body["speed"] = 1.25  # the atempo filter path
        if self.rng.random() < 0.2:
            body["sample_rate"] = 16000  # the resampler path (a rate every format takes)
        body.update(extra)
        return body

    # -- speech over HTTP ------------------------------------------------------------------------------
    def speech(self, t: Timing, fmt: str, stream: bool) -> int:
        body = self.speech_body(fmt, stream=stream)
        data = b""
        with self.http.stream("POST", "/v1/audio/speech", json=body) as r:
            if r.status_code != 200:
                r.read()
                check(r, "POST /v1/audio/speech")
            for chunk in r.iter_bytes():
                t.first_byte()
                data += chunk
        if not looks_like(fmt, data) or (fmt == "pcm" and len(data) % 2):
            raise Unexpected("speech body", 200, f"{len(data)} bytes, starts {data[:16]!r}")
        return 200

    def sse(self, t: Timing, fmt: str) -> int:
        body = self.speech_body(fmt, stream_format="sse")
        events = []
        with self.http.stream("POST", "/v1/audio/speech", json=body) as r:
            if r.status_code != 200:
                r.read()
                check(r, "POST /v1/audio/speech sse")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    t.first_byte()
                    events.append(json.loads(line[6:]))
        kinds = [e.get("type") for e in events]
        if not kinds or kinds[-1] != "speech.audio.done" or "speech.audio.delta" not in kinds:
            raise Unexpected("sse events", 200, f"events {kinds[:5]}...{kinds[-3:]}: {events[-1:]}"[:500])
        audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
        if not looks_like(fmt, audio):
            raise Unexpected("sse audio", 200, f"starts {audio[:16]!r}")
        return 200

    # -- WebSocket -------------------------------------------------------------------------------------
    def ws_session(self, t: Timing, mode: str, bad_message: bool = False) -> int:
        start = {"type": "session.start", "text_mode": mode, "response_format": "pcm", **self.voice_fields()}
        start.update(self.sampling())
        text = self.rng.choice(LIVE_TEXTS) if mode == "live" else " ".join(self.rng.sample(TEXTS, 2))
        audio, events = 0, []

        def take(msg) -> None:
            nonlocal audio
            if isinstance(msg, bytes):
                t.first_byte()
                audio += len(msg)
            else:
                events.append(json.loads(msg))

        with ws_connect(self.ws_url, additional_headers=self.headers, open_timeout=30) as ws:
            ws.send(json.dumps(start))
            first = json.loads(ws.recv(timeout=self.timeout))
            if first.get("type") != "session.started":
                raise Unexpected("ws session.start", None, json.dumps(first)[:500])
            try:
                words = text.split(" ")
                for i, word in enumerate(words):
                    ws.send(json.dumps({"type": "input.append", "text": word if i == 0 else " " + word}))
                    if bad_message and i == 1:
                        ws.send("{not json")
                    time.sleep(0.03)  # an LLM's pace, roughly
                    while (msg := _poll(ws)) is not None:
                        take(msg)
                ws.send(json.dumps({"type": "input.flush"}))
            except ConnectionClosed:
                pass  # a generation that reached its frame cap ends the session before the flush
            try:
                while not events or events[-1].get("type") not in ("session.done", "error"):
                    take(ws.recv(timeout=self.timeout))
            except ConnectionClosed:
                pass
        kinds = [e.get("type") for e in events]
        errors = [e for e in events if e.get("type") == "error"]
        want_errors = 1 if bad_message else 0
        if "session.done" not in kinds or len(errors) != want_errors or audio == 0:
            raise Unexpected(f"ws {mode}", None, f"{audio} audio bytes, events {json.dumps(events)[:400]}")
        if bad_message and errors[0]["error"].get("code") != "invalid_json":
            raise Unexpected(f"ws {mode} bad message", None, json.dumps(errors[0])[:500])
        return 400 if bad_message else 200

    # -- jobs ------------------------------------------------------------------------------------------
    def job(self, t: Timing, cancel: bool) -> int:
        fmt = self.rng.choice(FORMATS)
        body = {"model": "tts-1", "input": JOB_TEXT, "response_format": fmt, **self.voice_fields()}
        body.update(self.sampling())
        r = check(self.http.post("/v1/audio/speech/jobs", json=body), "POST jobs", (202,))
        t.first_byte()
        job_id = r.json()["id"]
        if cancel:
            c = check(self.http.post(f"/v1/audio/speech/jobs/{job_id}/cancel"), "POST jobs cancel").json()
            if c["status"] not in ("cancelled", "succeeded"):
                raise Unexpected("job after cancel", 200, json.dumps(c)[:500])
            check(self.http.delete(f"/v1/audio/speech/jobs/{job_id}"), "DELETE job")
            check(self.http.get(f"/v1/audio/speech/jobs/{job_id}"), "GET deleted job", (404,))
            return 200
        status = self.poll_job(job_id)
        if status["status"] != "succeeded":
            raise Unexpected("job", 200, json.dumps(status)[:500])
        data = check(self.http.get(f"/v1/audio/speech/jobs/{job_id}/content"), "GET job content").content
        if not looks_like(fmt, data):
            raise Unexpected("job content", 200, f"{len(data)} bytes, starts {data[:16]!r}")
        if self.rng.random() < 0.5:  # the rest stay until they expire, as a real client's might
            check(self.http.delete(f"/v1/audio/speech/jobs/{job_id}"), "DELETE job")
        return 200

    def poll_job(self, job_id: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            s = check(self.http.get(f"/v1/audio/speech/jobs/{job_id}"), "GET job").json()
            if s["status"] in ("succeeded", "failed", "cancelled"):
                return s
            time.sleep(0.2)
        raise Unexpected("job poll", None, f"not finished after {self.timeout} s")

    # -- the voice library -----------------------------------------------------------------------------
    def voice(self, t: Timing) -> int:
        name = self.name("voice")
        if "voice_design" in self.caps.model_types and self.rng.random() < 0.25:
            body = {"name": name, "instructions": DESIGN, "input": self.rng.choice(TEXTS), **self.sampling()}
            if self.max_new_tokens is None or self.max_new_tokens > 16:
                # a clone needs 1 s of the designed clip: random weights may sample their end sooner
                body["min_new_tokens"] = 16
            r = check(self.http.post("/v1/voices/from-design", json=body), "POST from-design", (201,))
        else:
            files = {"file": (f"{name}.wav", self.ref_wav, "audio/wav")}
            r = check(
                self.http.post("/v1/voices", files=files, data={"name": name, "ref_text": REF_TEXT}),
                "POST /v1/voices",
                (201,),
            )
        t.first_byte()
        voice_id = r.json()["id"]
        try:
            body = {
                "model": "tts-1",
                "input": self.rng.choice(TEXTS),
                "voice": self.rng.choice([name, voice_id]),
            }
            body.update(self.sampling(), response_format="wav", stream=False)
            audio = check(self.http.post("/v1/audio/speech", json=body), "speech with saved voice").content
            if not looks_like("wav", audio):
                raise Unexpected("speech with saved voice", 200, f"starts {audio[:16]!r}")
            check(self.http.get(f"/v1/voices/{voice_id}"), "GET voice")
        finally:
            check(self.http.delete(f"/v1/voices/{voice_id}"), "DELETE voice")
        check(self.http.get(f"/v1/voices/{voice_id}"), "GET deleted voice", (404,))
        body["voice"] = voice_id
        check(self.http.post("/v1/audio/speech", json=body), "speech with deleted voice", (400, 404))
        return 200

    def design_preview(self, t: Timing) -> int:
        body = {"instructions": DESIGN, "input": self.rng.choice(TEXTS), **self.sampling()}
        r = check(self.http.post("/v1/voices/design", json=body), "POST /v1/voices/design")
        t.first_byte()
        if not looks_like("wav", r.content) or not r.headers.get("x-utter-seed"):
            raise Unexpected("design preview", 200, f"starts {r.content[:16]!r}")
        return 200

    # -- utter's routes --------------------------------------------------------------------------------
    def compat_body(self, **extra: Any) -> dict[str, Any]:
        body = {"language": "Auto", "ref_audio_base64": self.ref_b64, "ref_text": REF_TEXT}
        body.update(extra)
        if self.max_new_tokens is not None:
            body["max_new_tokens"] = self.max_new_tokens
        return body

    def compat_clone(self, t: Timing) -> int:
        r = check(self.http.post("/clone", json=self.compat_body(text=self.rng.choice(TEXTS))), "POST /clone")
        t.first_byte()
        if not looks_like("wav", r.content):
            raise Unexpected("/clone body", 200, f"starts {r.content[:16]!r}")
        return 200

    def compat_batch(self, t: Timing) -> int:
        texts = self.rng.sample(TEXTS, 2)
        body = self.compat_body(texts=texts, languages=["English", "Auto"])
        del body["language"]
        out = check(self.http.post("/clone-batch", json=body), "POST /clone-batch").json()
        t.first_byte()
        files = out.get("audio_files") or []
        if out.get("status") != "success" or len(files) != 2:
            raise Unexpected("/clone-batch body", 200, json.dumps(out)[:500])
        if not all(looks_like("wav", base64.b64decode(f["audio_base64"])) for f in files):
            raise Unexpected("/clone-batch audio", 200, "not WAV")
        return 200

    def compat_design(self, t: Timing) -> int:
        body = {"text": self.rng.choice(TEXTS), "language": "English", "instruct": DESIGN}
        r = check(self.http.post("/design", json=body), "POST /design")
        t.first_byte()
        if not looks_like("wav", r.content):
            raise Unexpected("/design body", 200, f"starts {r.content[:16]!r}")
        return 200

    def compat_job(self, t: Timing, cancel: bool) -> int:
        r = check(self.http.post("/submit-job", json=self.compat_body(text=JOB_TEXT)), "POST /submit-job")
        t.first_byte()
        job_id = r.json()["job_id"]
        if cancel:
            c = check(self.http.post("/cancel-job", json={"job_id": job_id}), "POST /cancel-job").json()
            if c.get("status") != "cancelled":
                raise Unexpected("/cancel-job", 200, json.dumps(c)[:500])
            return 200
        deadline = time.monotonic() + self.timeout
        while True:
            s = check(self.http.get("/job-status", params={"job_id": job_id}), "GET /job-status").json()
            if s.get("status") == "completed" and s.get("result_ready"):
                break
            if s.get("status") == "failed" or time.monotonic() > deadline:
                raise Unexpected("/job-status", 200, json.dumps(s)[:500])
            time.sleep(0.2)
        r = check(self.http.get("/job-result", params={"job_id": job_id}), "GET /job-result")
        if not looks_like("wav", r.content):
            raise Unexpected("/job-result body", 200, f"starts {r.content[:16]!r}")
        return 200

    # -- clients that leave ----------------------------------------------------------------------------
    def abort_http(self, t: Timing, sse: bool) -> int:
        """Read the first chunk of a stream, then drop the connection (httpx closes a half-read one)."""
        fmt = self.rng.choice(("pcm", "mp3", "opus", "aac"))
        body = self.speech_body(fmt, **({"stream_format": "sse"} if sse else {"stream": True}))
        # A fresh client: leaving must close the socket, not hand it back to the worker's pool.
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout) as c:
            with c.stream("POST", "/v1/audio/speech", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    check(r, "POST /v1/audio/speech (leaving)")
                for _ in r.iter_raw():
                    t.first_byte()
                    break
        if t.first is None:
            raise Unexpected("stream to leave", 200, "no first chunk")
        return 200

    def abort_ws(self, t: Timing) -> int:
        start = {"type": "session.start", "text_mode": "sentence", "response_format": "pcm"}
        start.update(self.voice_fields(), **self.sampling())
        with ws_connect(self.ws_url, additional_headers=self.headers, open_timeout=30) as ws:
            ws.send(json.dumps(start))
            json.loads(ws.recv(timeout=self.timeout))
            ws.send(json.dumps({"type": "input.append", "text": " ".join(TEXTS[:3])}))
            while not isinstance(msg := ws.recv(timeout=self.timeout), bytes):
                if json.loads(msg).get("type") == "error":
                    raise Unexpected("ws to leave", None, msg[:500])
            t.first_byte()
        return 200  # leaving the `with` closes the socket mid-session


def _poll(ws):
    """The next message if one is already here, else None."""
    try:
        return ws.recv(timeout=0)
    except TimeoutError:
        return None


# ---- malformed requests: each must get a 4xx -----------------------------------------------------------
def malformed_cases(w: Worker) -> dict[str, Any]:
    """name -> a call returning the status the server gave (WebSocket cases: 400 when the server said
    `error` as it should)."""
    sp = "/v1/audio/speech"
    good = {"model": "tts-1", "input": "Hi there.", **w.voice_fields(), **w.sampling()}

    def post(path: str, **kw):
        return lambda: w.http.post(path, **kw).status_code

    def speech(**changes):
        body = dict(good)
        for k, v in changes.items():
            if v is None:
                body.pop(k, None)
            else:
                body[k] = v
        return post(sp, json=body)

    def raw(path: str, content: bytes, ctype: str = "application/json"):
        return post(path, content=content, headers={"content-type": ctype})

    cases: dict[str, Any] = {
        "speech.missing_input": speech(input=None),
        "speech.input_not_string": speech(input=123),
        "speech.oversize_text": speech(input="word " * 60_000),
        "speech.control_char": speech(input="Hi\u0000there"),
        "speech.blank_input": speech(input="   "),
        "speech.lone_surrogate": raw(sp, b'{"model":"tts-1","input":"\\ud800","voice":"alloy"}'),
        "speech.not_json": raw(sp, b'{"model": "tts-1", "input": '),
        "speech.body_is_list": raw(sp, b"[1, 2, 3]"),
        "speech.unknown_voice": speech(
            voice="no-such-voice-xyz", instructions=None, ref_audio=None, ref_text=None
        ),
        "speech.unknown_model": speech(model="no-such-model"),
        "speech.bad_format": speech(response_format="ogg-vorbis"),
        "speech.speed_string": speech(speed="fast"),
        "speech.speed_out_of_range": speech(speed=100.0),
        "speech.temperature_bool": speech(temperature=True),
        "speech.seed_negative": speech(seed=-1),
        "speech.top_p_zero": speech(top_p=0.0),
        "speech.unknown_field": speech(colour="blue"),
        "speech.bad_sample_rate": speech(sample_rate=12345),
        "speech.bad_stream_format": speech(stream_format="websocket"),
        "speech.sse_not_streamed": speech(stream_format="sse", stream=False),
        "speech.bad_base64": speech(
            voice="clone", ref_audio="!!!not base64!!!", ref_text="x", instructions=None
        ),
        "speech.bad_audio": speech(
            voice="clone",
            ref_audio=base64.b64encode(os.urandom(4000)).decode(),
            ref_text="x",
            instructions=None,
        ),
        "voices.garbage_audio": post("/v1/voices", files={"file": ("a.wav", os.urandom(5000), "audio/wav")}),
        "voices.empty_file": post("/v1/voices", files={"file": ("a.wav", b"", "audio/wav")}),
        "voices.no_file": post("/v1/voices", files={"name": (None, "x")}),
        "voices.silent": post(
            "/v1/voices", files={"file": ("s.wav", tone_wav(1.5, 200, silent=True), "audio/wav")}
        ),
        "voices.too_short": post("/v1/voices", files={"file": ("s.wav", tone_wav(0.2, 200), "audio/wav")}),
        "voices.reserved_name": post(
            "/v1/voices", files={"file": ("a.wav", w.ref_wav, "audio/wav")}, data={"name": "design"}
        ),
        "voices.unknown_field": post(
            "/v1/voices", files={"file": ("a.wav", w.ref_wav, "audio/wav")}, data={"colour": "blue"}
        ),
        "voices.not_multipart": post("/v1/voices", json={"file": "abc"}),
        "voices.delete_unknown": lambda: w.http.delete("/v1/voices/voice_doesnotexist0000").status_code,
        "voices.get_bad_id": lambda: w.http.get("/v1/voices/..%2F..%2Fetc").status_code,
        "voices.design_no_instructions": post("/v1/voices/design", json={"input": "Hi."}),
        "jobs.unknown_status": lambda: w.http.get("/v1/audio/speech/jobs/job_nope").status_code,
        "jobs.unknown_content": lambda: w.http.get("/v1/audio/speech/jobs/job_nope/content").status_code,
        "jobs.unknown_cancel": post("/v1/audio/speech/jobs/job_nope/cancel"),
        "jobs.sse": post("/v1/audio/speech/jobs", json={**good, "stream_format": "sse"}),
        "jobs.bad_format": post("/v1/audio/speech/jobs", json={**good, "response_format": "xyz"}),
        "ws.no_voice": lambda: ws_refused(w, {"type": "session.start", "response_format": "pcm"}),
        "ws.not_json_start": lambda: ws_refused(w, "hello"),
        "ws.bad_format": lambda: ws_refused(
            w, {"type": "session.start", "voice": "alloy", "response_format": "x"}
        ),
        "ws.bad_message_mid_session": lambda: w.ws_session(
            Timing(time.monotonic()), "sentence", bad_message=True
        ),
    }
    if w.caps.auth:
        cases["auth.no_key"] = lambda: httpx.post(f"{w.url}{sp}", json=good, timeout=w.timeout).status_code
        cases["auth.wrong_key"] = lambda: (
            httpx.post(
                f"{w.url}{sp}", json=good, headers={"Authorization": "Bearer sk-wrong"}, timeout=w.timeout
            ).status_code
        )
    if w.caps.compat:
        cases.update(
            {
                "compat.clone_no_ref_text": post("/clone", json=w.compat_body(text="Hi.", ref_text="")),
                "compat.clone_bad_base64": post(
                    "/clone", json=w.compat_body(text="Hi.", ref_audio_base64="@@@")
                ),
                "compat.clone_bad_audio": post(
                    "/clone",
                    json=w.compat_body(text="Hi.", ref_audio_base64=base64.b64encode(b"x" * 999).decode()),
                ),
                "compat.clone_bad_language": post(
                    "/clone", json=w.compat_body(text="Hi.", language="Klingon")
                ),
                "compat.clone_text_not_string": post("/clone", json=w.compat_body(text=["a", "b"])),
                "compat.design_too_long": post(
                    "/design", json={"text": "x" * 501, "language": "English", "instruct": DESIGN}
                ),
                "compat.design_no_instruct": post("/design", json={"text": "Hi.", "language": "English"}),
                "compat.batch_mismatch": post(
                    "/clone-batch", json=w.compat_body(texts=["a.", "b."], languages=["Auto"])
                ),
                "compat.not_json": raw("/clone", b"{nope"),
                "compat.submit_no_text": post("/submit-job", json=w.compat_body(text="")),
                "compat.status_no_id": lambda: w.http.get("/job-status").status_code,
                "compat.result_unknown": lambda: (
                    w.http.get("/job-result", params={"job_id": "nope"}).status_code
                ),
                "compat.cancel_no_id": post("/cancel-job", json={}),
                "compat.cancel_unknown": post("/cancel-job", json={"job_id": "nope"}),
            }
        )
    return cases


def ws_refused(w: Worker, start) -> int:
    """A session start the server must refuse: an `error` event (4xx status inside), then the close."""
    with ws_connect(w.ws_url, additional_headers=w.headers, open_timeout=30) as ws:
        ws.send(start if isinstance(start, str) else json.dumps(start))
        try:
            msg = json.loads(ws.recv(timeout=w.timeout))
        except ConnectionClosed as e:
            raise Unexpected("ws refused start", None, f"closed without an error event: {e}") from None
    if msg.get("type") != "error":
        raise Unexpected("ws refused start", None, json.dumps(msg)[:500])
    # The event carries no status; its error type says which side is at fault.
    return 400 if msg["error"].get("type") != "server_error" else 500


# ---- the deck ------------------------------------------------------------------------------------------
def build_deck(w: Worker) -> list[tuple[str, Any]]:
    """(kind, call) pairs, each as often as its weight; every worker walks its own shuffled copy."""
    deck: list[tuple[str, Any]] = []

    def add(kind: str, fn, times: int = 1) -> None:
        deck.extend([(kind, fn)] * times)

    for fmt in FORMATS:
        add(f"speech.{fmt}", lambda t, f=fmt: w.speech(t, f, stream=False))
        add(f"speech.{fmt}.stream", lambda t, f=fmt: w.speech(t, f, stream=True))
    add("sse.pcm", lambda t: w.sse(t, "pcm"))
    add("sse.mp3", lambda t: w.sse(t, "mp3"))
    add("ws.live", lambda t: w.ws_session(t, "live"), 2)
    add("ws.sentence", lambda t: w.ws_session(t, "sentence"))
    add("job", lambda t: w.job(t, cancel=False))
    add("job.cancel", lambda t: w.job(t, cancel=True))
    add("voice.upload", w.voice)
    if "voice_design" in w.caps.model_types:
        add("voice.design_preview", w.design_preview)
    if w.caps.compat and "base" in w.caps.model_types:
        add("compat.clone", w.compat_clone)
        add("compat.clone_batch", w.compat_batch)
        add("compat.job", lambda t: w.compat_job(t, cancel=False))
        add("compat.job.cancel", lambda t: w.compat_job(t, cancel=True))
    if w.caps.compat and "voice_design" in w.caps.model_types:
        add("compat.design", w.compat_design)
    add("abort.http", lambda t: w.abort_http(t, sse=False), 2)
    add("abort.sse", lambda t: w.abort_http(t, sse=True))
    add("abort.ws", w.abort_ws)
    add("malformed", None, 8)
    return deck


def worker_loop(w: Worker, deadline: float, stop: threading.Event, allow_busy: bool) -> None:
    deck = build_deck(w)
    cases = malformed_cases(w)
    case_names = sorted(cases)
    rec = w.recorder
    while not stop.is_set() and time.monotonic() < deadline:
        w.rng.shuffle(deck)
        for kind, fn in deck:
            if stop.is_set() or time.monotonic() >= deadline:
                break
            case = None
            if fn is None:  # the cases in turn, each worker from its own place: all of them come up early
                case = case_names[(w.index * 7 + w.serial_bad) % len(case_names)]
                w.serial_bad += 1
            t = Timing(time.monotonic())
            status: int | None = None
            try:
                status = cases[case]() if case else fn(t)
                if case:
                    rec.malformed[case][str(status)] += 1
                    if status == 429:
                        raise Busy(case, "")
                    if not 400 <= status < 500:
                        raise Unexpected(case, status, "a malformed request must get a 4xx")
                    outcome = "expected_4xx"
                else:
                    outcome = "ok"
            except Busy as e:
                status, outcome = 429, "busy"
                if not allow_busy:
                    rec.fail(kind, "busy (429) on a valid request", step=e.step, body=e.body, case=case)
            except Unexpected as e:
                status, outcome = e.status, "unexpected"
                rec.fail(
                    kind, "unexpected status or body", step=e.step, status=e.status, body=e.body, case=case
                )
            except Exception as e:  # a broken connection, a timeout, a protocol error
                outcome = "exception"
                rec.fail(kind, "exception", error=f"{type(e).__name__}: {e}"[:500], case=case)
            rec.record(kind, outcome, t, time.monotonic(), status)
    w.http.close()


# ---- the report ----------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def latency_stats(rows: list[tuple]) -> dict[str, Any]:
    """p50/p99 (ms) of time to first byte and of the whole request, over the rows that went as meant."""
    good = [r for r in rows if r[2] in ("ok", "expected_4xx")]
    ttfb = [r[3] * 1000 for r in good if r[3] is not None]
    total = [r[4] * 1000 for r in good]

    def ms(v):
        return None if v is None else round(v, 1)

    return {
        "n": len(good),
        "ttfb_ms": {"p50": ms(percentile(ttfb, 50)), "p99": ms(percentile(ttfb, 99))},
        "total_ms": {"p50": ms(percentile(total, 50)), "p99": ms(percentile(total, 99))},
    }


def group(kind: str) -> str:
    head = kind.split(".", 1)[0]
    if kind.endswith(".cancel"):
        return "cancel"
    if head == "speech":
        return "stream" if kind.endswith(".stream") else "speech"
    if head == "compat":
        return "job" if kind == "compat.job" else "utter"
    return {"sse": "stream", "ws": "websocket", "abort": "leave"}.get(head, head)


def summarize(records: list[tuple], statuses: dict[str, Counter], duration: float, window: float) -> dict:
    by_kind: dict[str, list[tuple]] = defaultdict(list)
    for r in records:
        by_kind[r[1]].append(r)
    totals = {}
    for kind in sorted(by_kind):
        rows = by_kind[kind]
        counts = Counter(r[2] for r in rows)
        totals[kind] = {
            "requests": len(rows),
            **{o: counts.get(o, 0) for o in OUTCOMES},
            "statuses": dict(sorted(statuses[kind].items())),
        }
    overall_counts = Counter(r[2] for r in records)
    overall = {
        "requests": len(records),
        **{o: overall_counts.get(o, 0) for o in OUTCOMES},
        "requests_per_s": round(len(records) / duration, 2) if duration > 0 else None,
        "status_5xx": sum(
            n for c in statuses.values() for s, n in c.items() if s.isdigit() and int(s) >= 500
        ),
    }
    latency = {kind: latency_stats(rows) for kind, rows in sorted(by_kind.items())}
    windows = []
    for i in range(max(1, math.ceil(duration / window - 1e-9))):
        lo, hi = i * window, min(duration, (i + 1) * window)
        rows = [r for r in records if lo <= r[0] < hi]
        groups: dict[str, list[tuple]] = defaultdict(list)
        for r in rows:
            groups[group(r[1])].append(r)
        windows.append(
            {
                "start_s": round(lo, 1),
                "end_s": round(hi, 1),
                "requests": len(rows),
                "failed": sum(r[2] in ("unexpected", "exception") for r in rows),
                # streamed and whole kinds together would mix two distributions: "all" is valid requests
                "all_valid": latency_stats([r for r in rows if r[1] != "malformed"]),
                "groups": {g: latency_stats(v) for g, v in sorted(groups.items())},
                "kinds": {
                    k: latency_stats([r for r in rows if r[1] == k]) for k in sorted({r[1] for r in rows})
                },
            }
        )
    return {"totals": totals, "overall": overall, "latency": latency, "windows": windows}


def memory_summary(samples: list[dict], warmup: float, bound: float) -> dict[str, Any]:
    """Resident memory at the start, after the warm-up, at the end; growth since the warm-up and its slope."""
    rss = [(s["t_s"], s["rss_mib"]) for s in samples if s.get("rss_mib") is not None]
    if not rss:
        return {"sampled": False}
    after = [p for p in rss if p[0] >= warmup] or rss[-1:]
    base, end = after[0][1], rss[-1][1]
    slope = None
    if len(after) >= 3 and after[-1][0] > after[0][0]:
        t = np.array([p[0] for p in after]) / 60
        slope = round(float(np.polyfit(t, np.array([p[1] for p in after]), 1)[0]), 2)
    growth = round(end - base, 1)
    return {
        "sampled": True,
        "start_mib": round(rss[0][1], 1),
        "after_warmup_mib": round(base, 1),
        "warmup_s": warmup,
        "end_mib": round(end, 1),
        "max_mib": round(max(v for _, v in rss), 1),
        "growth_mib": growth,
        "slope_mib_per_min": slope,
        "bound_mib": bound,
        "within_bound": growth <= bound,
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "node": platform.node(),
    }
    try:
        mem = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        info["memory_gib"] = round(int(mem["MemTotal"].split()[0]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def server_log_errors(path: Path | None, limit: int = 40) -> dict[str, Any]:
    """The server log's error lines (tracebacks and ERROR records): a handled request should leave none."""
    if path is None or not path.exists():
        return {"read": False}
    lines = path.read_text("utf-8", "replace").splitlines()
    hits = [ln for ln in lines if "Traceback" in ln or " ERROR " in ln or ln.startswith("ERROR")]
    return {"read": True, "path": str(path), "error_lines": len(hits), "first": hits[:limit]}


def plot(report: dict, path: Path) -> bool:
    """Resident memory (with threads and open files) over time; p50/p99 latency per group and window."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    samples = report["samples"]
    fig, (ax_mem, ax_total, ax_ttfb) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    t = [s["t_s"] / 60 for s in samples]
    if any(s.get("rss_mib") is not None for s in samples):
        ax_mem.plot(t, [s.get("rss_mib") for s in samples], color="black", label="resident memory (MiB)")
        ax_mem.set_ylabel("MiB")
        right = ax_mem.twinx()
        right.plot(t, [s.get("threads") for s in samples], color="tab:blue", alpha=0.6, label="threads")
        right.plot(t, [s.get("fds") for s in samples], color="tab:orange", alpha=0.6, label="open files")
        right.set_ylabel("count")
        lines = ax_mem.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax_mem.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    else:
        ax_mem.text(
            0.5, 0.5, "no process samples (--url without --pid)", ha="center", transform=ax_mem.transAxes
        )
    ax_mem.set_title("server process")
    mids = [(w["start_s"] + w["end_s"]) / 120 for w in report["windows"]]
    colors = dict(zip(GROUPS, plt.get_cmap("tab10").colors))
    panels = (
        (ax_total, "total_ms", "whole request", PLOT_TOTAL),
        (ax_ttfb, "ttfb_ms", "first audio", PLOT_TTFB),
    )
    for ax, metric, title, groups in panels:
        for g in groups:
            for q, style in (("p50", "-"), ("p99", "--")):
                ys = [w["groups"].get(g, {}).get(metric, {}).get(q) for w in report["windows"]]
                if any(y is not None for y in ys):
                    ys = [math.nan if y is None else y for y in ys]
                    label = f"{GROUPS[g]} {q}" if q == "p50" else None
                    ax.plot(mids, ys, style, marker=".", color=colors[g], label=label)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"latency per window, {title} (p50 solid, p99 dashed)")
        ax.legend(fontsize=7, ncol=3, loc="lower left")
    ax_ttfb.set_xlabel("minutes")
    o = report["overall"]
    fig.suptitle(
        f"utter-tts {report['server'].get('version')} soak: {o['requests']} requests, "
        f"{report['failures']['count']} failures, {report['settings']['clients']} clients"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the load runs (default: 30)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent workers (default: 4)")
    ap.add_argument("--out", type=Path, default=Path("soak-out"), help="folder for soak.json and soak.png")
    ap.add_argument("--url", help="an already running server instead of starting one")
    ap.add_argument(
        "--api-key",
        action="append",
        help="a key for --url (repeatable: the clients take them in turn; one key per client keeps each "
        "within the per-key job limit; default: env UTTER_TTS_API_KEY)",
    )
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, to sample its memory")
    ap.add_argument("--models", nargs="+", help="checkpoints for the started server (default: tiny random)")
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        help="frame cap: the started server's flag and every request's field (default: 20 for the tiny "
        "random models, which never stop by themselves; unset for --url and --models)",
    )
    ap.add_argument("--server-arg", action="append", default=[], help="extra flags for the started server")
    ap.add_argument("--server-log-level", default="warning")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds for the server to load")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between process samples")
    ap.add_argument("--window", type=float, help="seconds per latency window (default: about a tenth, <= 60)")
    ap.add_argument(
        "--warmup", type=float, help="seconds before the memory baseline (default: a fifth, <= 120)"
    )
    ap.add_argument(
        "--max-rss-growth-mib", type=float, default=256.0, help="memory growth that fails the run"
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds any one request may take")
    ap.add_argument("--allow-busy", action="store_true", help="a 429 on a valid request is no failure")
    ap.add_argument("--seed", type=int, default=0, help="the workers' random choices")
    ap.add_argument("--keep", action="store_true", help="keep the started server's checkpoints and data")
    args = ap.parse_args(argv)
    if args.max_new_tokens is None and not args.url and not args.models:
        args.max_new_tokens = 20
    if args.pid is not None and not args.url:
        ap.error("--pid goes with --url")
    if args.minutes <= 0 or args.clients < 1:
        ap.error("--minutes must be above 0 and --clients at least 1")
    if not args.api_key:
        args.api_key = [os.environ["UTTER_TTS_API_KEY"]] if os.environ.get("UTTER_TTS_API_KEY") else [None]
    return args


def wait_idle(url: str, timeout: float = 30.0) -> dict | None:
    """/health's queue once nothing runs or waits; None if it stays busy for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    queue = None
    while time.monotonic() < deadline:
        try:
            queue = httpx.get(f"{url}/health", timeout=10).json().get("queue")
        except Exception:
            queue = None
        if queue is not None and queue.get("active") == 0 and queue.get("waiting") == 0:
            return queue
        time.sleep(0.5)
    return None


def run(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    duration = args.minutes * 60
    window = args.window or min(60.0, max(5.0, duration / 10))
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 5)
    own = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
        keys = [args.api_key[i % len(args.api_key)] for i in range(args.clients)]
        log_path = None
    else:
        # One key per client: owners are isolated, and the per-key job limit is each client's own.
        keys = [f"sk-soak-{i}" for i in range(args.clients)]
        log_path = args.out / "soak-server.log"
        own = OwnServer(args, keys, log_path)
        print(f"starting the server (log: {log_path}) ...", flush=True)
        own.start()
        url, pid = own.url, own.proc.pid
    try:
        caps = discover(url, keys[0])
        print(
            f"server {caps.version} at {url}: models {sorted(caps.model_types)}, compat {caps.compat}",
            flush=True,
        )
        t0 = time.monotonic()
        recorder = Recorder(t0)
        probe = ProcessProbe(pid) if pid is not None else None
        sampler = Sampler(url, probe, own.proc if own else None, recorder, args.sample_every)
        sampler.start()
        stop = threading.Event()
        deadline = t0 + duration
        workers = [
            Worker(
                i,
                url,
                keys[i],
                caps,
                recorder,
                args.max_new_tokens,
                args.timeout,
                random.Random(args.seed * 1000 + i),
            )
            for i in range(args.clients)
        ]
        threads = [
            threading.Thread(
                target=worker_loop, args=(w, deadline, stop, args.allow_busy), name=f"soak-{w.index}"
            )
            for w in workers
        ]
        for th in threads:
            th.start()
        last_print = t0
        while any(th.is_alive() for th in threads):
            time.sleep(0.5)
            if sampler.died is not None:
                stop.set()  # nothing left to test
            if time.monotonic() - last_print >= 30:
                last_print = time.monotonic()
                done, failed = recorder.done(), recorder.failure_count
                print(f"  {last_print - t0:6.0f} s: {done} requests, {failed} failures", flush=True)
        for th in threads:
            th.join()
        elapsed = time.monotonic() - t0
        idle = wait_idle(url) if sampler.died is None else None
        sampler.stop.set()
        sampler.join()
        sampler.take()  # a last sample, after the load
        checks: dict[str, Any] = {
            "server_alive": sampler.died is None,
            "slots_freed_after_load": idle is not None,
        }
        if sampler.died is not None:
            recorder.fail("server", "server died", why=sampler.died)
        elif idle is None:
            recorder.fail("server", "generation slots still busy 30 s after the load ended")
        leftovers = {}
        if sampler.died is None:
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {keys[0]}"} if keys[0] else {}
            ) as c:
                leftovers["voices_of_client_0"] = len(c.get("/v1/voices").json().get("data", []))
                jobs = c.get("/v1/audio/speech/jobs").json().get("data", [])
                leftovers["jobs_of_client_0"] = dict(Counter(j["status"] for j in jobs))
        server_exit = None
    finally:
        if own is not None:
            server_exit = own.stop()
            print(f"server stopped (exit status {server_exit})", flush=True)
    if own is not None:
        checks["server_exit_status"] = server_exit
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again: -15 is a clean stop
        if server_exit not in (0, -signal.SIGTERM, None) and sampler.died is None:
            recorder.fail("server", "server did not exit cleanly on SIGTERM", status=server_exit)
    log_errors = server_log_errors(log_path)
    if log_errors.get("error_lines"):  # a request handled as it should leaves no traceback behind
        recorder.fail("server", "the server logged errors", lines=log_errors["first"][:10])
    memory = memory_summary(sampler.samples, warmup, args.max_rss_growth_mib)
    checks["rss_within_bound"] = memory.get("within_bound")
    if memory.get("within_bound") is False:
        recorder.fail("server", "resident memory grew past the bound", **memory)
    # Windows cover the load period: no scenario starts after it (the last ones end a little later).
    span = min(elapsed, duration)
    summary = summarize(recorder.records, recorder.statuses, span, window)
    summary["overall"]["requests_per_s"] = round(len(recorder.records) / elapsed, 2)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["api_key"] = [None if k is None else "(set)" for k in args.api_key]  # never a key in a report
    settings.update(
        url=url, own_server=own is not None, window_s=window, warmup_s=warmup, elapsed_s=round(elapsed, 1)
    )
    if own is not None:
        settings["server_command"] = own.cmd
    report = {
        "settings": settings,
        "server": {
            "version": caps.version,
            "model_types": sorted(caps.model_types),
            "speakers": caps.speakers,
            "compat": caps.compat,
            "auth": caps.auth,
            "health_at_start": caps.health,
        },
        "machine": machine(),
        **summary,
        "malformed_cases": {k: dict(v) for k, v in sorted(recorder.malformed.items())},
        "samples": sampler.samples,
        "memory": memory,
        "checks": checks,
        "leftovers": leftovers,
        "server_log": log_errors,
        "failures": {"count": recorder.failure_count, "details": recorder.failures},
    }
    report["ok"] = report["failures"]["count"] == 0
    (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    report["plotted"] = plot(report, args.out / "soak.png")
    return report


def print_summary(report: dict) -> None:
    o = report["overall"]
    print(
        f"{o['requests']} requests in {report['settings']['elapsed_s']} s ({o['requests_per_s']}/s): "
        + ", ".join(f"{k} {o[k]}" for k in OUTCOMES)
    )
    for kind, row in report["totals"].items():
        lat = report["latency"][kind]
        print(
            f"  {kind:22s} {row['requests']:5d}  ok {row['ok']:5d}  4xx {row['expected_4xx']:5d}  "
            f"bad {row['unexpected'] + row['exception'] + row['busy']:3d}  "
            f"ttfb p50 {lat['ttfb_ms']['p50']} ms  "
            f"total p50/p99 {lat['total_ms']['p50']}/{lat['total_ms']['p99']} ms"
        )
    m = report["memory"]
    if m.get("sampled"):
        print(
            f"memory: {m['start_mib']} MiB at start, {m['after_warmup_mib']} after warm-up, "
            f"{m['end_mib']} at end (max {m['max_mib']}; growth {m['growth_mib']}, bound {m['bound_mib']}; "
            f"{m['slope_mib_per_min']} MiB/min)"
        )
    print(f"failures: {report['failures']['count']}")
    for f in report["failures"]["details"][:10]:
        print(f"  {json.dumps(f)[:300]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_summary(report)
    print(
        f"report: {args.out / 'soak.json'}"
        + (f", plot: {args.out / 'soak.png'}" if report["plotted"] else "")
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
