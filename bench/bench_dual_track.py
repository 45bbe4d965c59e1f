"""Time to first audio after the first text token through the WebSocket: live (dual-track) vs sentence mode.

A real server process (`python -m utter_tts.server`) on a random-weight checkpoint; each session pushes a
10-word sentence one word every `--interval` seconds, as an LLM's tokens arrive, and the clock runs from
its first append to its first audio byte. Live mode speaks from the first final tokens on; sentence mode
waits for the sentence to end. One session alone, then `--sessions` at once.
  python bench/bench_dual_track.py [--model DIR] [--device cpu|cuda] [--sessions 32] [--out FILE]
Builds a tiny checkpoint when no --model is given (CPU figures are the tiny model's, not a real one's).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx
from websockets.sync.client import connect

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

SENTENCE = "This is a short sentence that an agent might say."  # ten words
KEY = "sk-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, device: str, streams: int, frames: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "utter_tts.server", model, "--port", str(port), "--device", device]
    cmd += ["--engine", "on", "--engine-streams", str(streams), "--max-concurrency", str(streams)]
    cmd += ["--max-queue", str(2 * streams), "--max-new-tokens", str(frames), "--log-level", "warning"]
    cmd += ["--data-dir", tempfile.mkdtemp(prefix="utter-bench-")]
    proc = subprocess.Popen(cmd, env=dict(os.environ, UTTER_TTS_API_KEYS=KEY))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def session(url: str, text_mode: str, interval: float, seed: int) -> float:
    """Seconds from the first append to the first audio byte of one session."""
    ws_url = url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}, open_timeout=60) as ws:
        start = {"type": "session.start", "voice": "vivian", "response_format": "pcm", "seed": seed}
        ws.send(json.dumps({**start, "text_mode": text_mode}))
        assert json.loads(ws.recv(timeout=60))["type"] == "session.started"
        words = SENTENCE.split(" ")
        first_audio: list[float] = []
        t0 = time.monotonic()

        def push() -> None:
            for i, word in enumerate(words):
                ws.send(json.dumps({"type": "input.append", "text": word if i == 0 else " " + word}))
                time.sleep(interval)
            ws.send(json.dumps({"type": "input.flush"}))

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        while True:
            msg = ws.recv(timeout=300)
            if isinstance(msg, bytes):
                if not first_audio:
                    first_audio.append(time.monotonic() - t0)
                continue
            event = json.loads(msg)
            if event["type"] == "error":
                raise RuntimeError(event)
            if event["type"] == "session.done":
                break
        pusher.join()
    return first_audio[0]


def run_sessions(url: str, text_mode: str, n: int, interval: float) -> list[float]:
    out: list[float] = [0.0] * n
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            out[i] = session(url, text_mode, interval, seed=i + 1)
        except BaseException as e:  # reported after all sessions end
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1), "n": len(ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint folder (default: a tiny random custom_voice one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between words (default 0.05)")
    ap.add_argument("--frames", type=int, default=40, help="the server's frame cap per generation")
    ap.add_argument("--rounds", type=int, default=5, help="one-session runs per mode")
    ap.add_argument("--out", default="bench/results/dual_track_cpu.json")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from utter_tts.demo import build_checkpoint

        model = str(build_checkpoint(Path(tempfile.mkdtemp()) / "cv", "custom_voice", "tiny-1.7b", seed=0))
    proc, url = start_server(model, args.device, args.sessions, args.frames)
    try:
        result: dict = {"date": date.today().isoformat(), "device": args.device}
        result["model"] = args.model or "tiny-1.7b custom_voice, random weights"
        result |= {"words": len(SENTENCE.split()), "interval_s": args.interval, "sessions": args.sessions}
        for mode in ("live", "sentence"):
            run_sessions(url, mode, 1, args.interval)  # warm
            one = [run_sessions(url, mode, 1, args.interval)[0] for _ in range(args.rounds)]
            many = run_sessions(url, mode, args.sessions, args.interval)
            result[mode] = {"one_session": summary(one), f"{args.sessions}_sessions": summary(many)}
            print(mode, result[mode], flush=True)
        live, sentence = result["live"]["one_session"]["p50_ms"], result["sentence"]["one_session"]["p50_ms"]
        result["live_over_sentence_one_session_p50"] = round(live / sentence, 3)
        print("live / sentence, one session p50:", result["live_over_sentence_one_session_p50"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
