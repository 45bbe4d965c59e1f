"""What agent frameworks' OpenAI TTS plugins (LiveKit Agents, Pipecat) send and expect: OpenAI's newer
voice names and dated model names."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from utter_tts.server.planner import OPENAI_VOICES, Planner
from utter_tts.server.registry import ModelRegistry
from utter_tts.service.inline_voices import InlineVoices
from utter_tts.voices.library import VoiceLibrary

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
