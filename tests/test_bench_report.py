"""The README's benchmark table is the one bench/report.py makes from the committed results, and
summary.json has the agreed shape (numbers, not strings)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_generated_from_the_results():
    r = report()
    folder = ROOT / "bench" / "results"
    s = r.summary(folder, "h200")
    assert json.loads((folder / "summary.json").read_text()) == s
    readme = (ROOT / "README.md").read_text("utf-8")
    assert r.with_table(readme, r.table(s, folder, "h200")) == readme


def test_summary_has_the_agreed_shape():
    s = json.loads((ROOT / "bench" / "results" / "summary.json").read_text())
    assert set(s) == {
        "card",
        "torch",
        "date",
        "same_call",
        "floor_ms_per_frame",
        "systems",
        "call_2026_12_05",
    }
    later = s["call_2026_12_05"]
    assert set(later["systems"]) == {"utter-tts", "utter-tts-no-pdl", "faster-qwen3-tts", "qwen3-tts-triton"}
    assert set(later["stack"]) == {"torch", "triton"}
    assert set(later["systems"]["qwen3-tts-triton"]) == {"one_stream_rtf", "ms_per_frame", "ttfa_p50_ms"}
    assert s["same_call"] is True and isinstance(s["floor_ms_per_frame"], float)
    ours = s["systems"]["utter-tts"]
    assert set(ours) == {"one_stream_rtf", "ms_per_frame", "kernels_per_frame", "ttfa_p50_ms",
                         "ttfa_p95_ms_32_streams", "streams"}  # fmt: skip
    assert set(ours["streams"]) == {"8", "32", "64"}
    for system in [*s["systems"].values(), *later["systems"].values()]:
        stack = [system]
        while stack:
            for v in stack.pop().values():
                if isinstance(v, dict):
                    stack.append(v)
                else:
                    assert isinstance(v, (int, float)) and not isinstance(v, bool), v
    assert set(s["systems"]) == {"utter-tts", "faster-qwen3-tts", "faster-qwen3-tts-batch", "official"}
