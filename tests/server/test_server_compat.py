"""What agent frameworks' OpenAI TTS plugins (LiveKit Agents, Pipecat) send and expect: OpenAI's newer
voice names and dated model names."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utter_tts.errors import InvalidInput
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
