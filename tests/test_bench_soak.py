"""bench/soak.py runs a short soak against a real `utter-tts serve --compat` process of tiny random models:
no failures, and a report (and plot) of the agreed shape; its figures' helpers on known inputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def soak():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_percentiles_memory_and_audio_checks():
    s = soak()
    assert s.percentile([], 50) is None
    assert s.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert s.percentile(list(map(float, range(1, 101))), 99) == 99.0
    samples = [{"t_s": t, "rss_mib": 100.0 + t} for t in range(0, 60, 5)]
    m = s.memory_summary(samples, warmup=10, bound=30)
    assert (m["start_mib"], m["after_warmup_mib"], m["end_mib"], m["growth_mib"]) == (100, 110, 155, 45)
    assert m["slope_mib_per_min"] == 60.0 and m["within_bound"] is False
    assert s.looks_like("wav", b"RIFF....WAVE") and not s.looks_like("wav", b'{"error": {}}')
    assert s.looks_like("opus", b"OggS\x00") and s.looks_like("flac", b"fLaC")
    assert s.looks_like("mp3", b"\xff\xfb\x90") and not s.looks_like("aac", b"")


def test_a_short_soak_of_a_tiny_server_has_no_failures(tmp_path):
    from utter_tts.demo import build_checkpoint

    s = soak()
    kinds = ("base", "voice_design", "custom_voice")
    models = [str(build_checkpoint(tmp_path / t, t, "tiny-1.7b")) for t in kinds]
    out = tmp_path / "out"
    argv = ["--minutes", "0.1", "--clients", "2", "--out", str(out), "--models", *models]
    argv += ["--max-new-tokens", "12", "--server-arg", "--device cpu --dtype float32"]
    argv += ["--sample-every", "1", "--window", "3", "--warmup", "2"]
    assert s.main(argv) == 0

    report = json.loads((out / "soak.json").read_text())
    assert report["ok"] is True and report["failures"] == {"count": 0, "details": []}
    parts = {"settings", "server", "machine", "totals", "overall", "latency", "windows", "samples", "memory"}
    assert parts <= set(report)
    assert report["server"]["compat"] is True and report["server"]["version"]
    assert set(report["server"]["model_types"]) == set(kinds)
    overall = report["overall"]
    assert overall["requests"] > 0 and overall["status_5xx"] == 0
    assert overall["unexpected"] == overall["exception"] == overall["busy"] == 0
    for kind, row in report["totals"].items():
        assert row["requests"] == sum(row[o] for o in s.OUTCOMES), kind
        assert set(report["latency"][kind]) == {"n", "ttfb_ms", "total_ms"}
    assert all(status.startswith("4") for c in report["malformed_cases"].values() for status in c)
    assert report["windows"] and all(w["end_s"] > w["start_s"] for w in report["windows"])
    samples = report["samples"]
    assert len(samples) >= 2 and all(x["rss_mib"] > 0 and x["threads"] > 0 and x["fds"] > 0 for x in samples)
    assert report["memory"]["sampled"] and report["memory"]["within_bound"]
    assert report["checks"]["server_alive"] and report["checks"]["slots_freed_after_load"]
    assert report["server_log"]["read"] and report["server_log"]["error_lines"] == 0
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
