"""Voice library over HTTP: upload, list, use, delete, privacy, design previews and designed voices."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from openai import OpenAI

from tests.server.conftest import ALICE, FRAMES, decode_audio, tone_wav


def upload(client, name: str, audio: bytes, ref_text: str | None = "hello there", filename: str = "ref.wav"):
    data = {"name": name}
    if ref_text is not None:
        data["ref_text"] = ref_text
    return client.post("/v1/voices", files={"file": (filename, audio, "application/octet-stream")}, data=data)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus"])
def test_upload_any_common_format_then_speak_with_it(client, server, fmt):
    r = upload(client, f"ref-{fmt}", tone_wav(fmt=fmt), filename=f"me.{fmt}")
    assert r.status_code == 201, r.text
    voice = r.json()
    assert voice["id"].startswith("voice_") and voice["mode"] == "icl" and voice["source"] == "upload"
    assert voice["meta"]["ref_seconds"] == pytest.approx(1.5, abs=0.1)
    oa = OpenAI(base_url=f"{server.url}/v1", api_key=ALICE, max_retries=0)
    # by id (string and OpenAI's object form) and by name
    for v in (voice["id"], {"id": voice["id"]}, f"ref-{fmt}"):
        audio = oa.audio.speech.create(
            model="tts-1", voice=v, input="Hi there.", response_format="wav"
        ).content
        assert len(decode_audio(audio, "wav")[0]) > 0
    assert client.delete(f"/v1/voices/{voice['id']}").json() == {
        "id": voice["id"],
        "object": "voice.deleted",
        "deleted": True,
    }


def test_create_list_get_delete_and_privacy(client, bob, reference_wav):
    mine = upload(client, "narrator", reference_wav).json()
    theirs = upload(bob, "narrator", reference_wav, ref_text=None).json()  # same name, other key: fine
    assert theirs["mode"] == "xvector"
    listed = client.get("/v1/voices").json()
    assert mine["id"] in [v["id"] for v in listed["data"]]
    assert theirs["id"] not in [v["id"] for v in listed["data"]]
    assert {p["id"] for p in listed["presets"]} == {"eric", "ryan", "vivian"}
    assert client.get(f"/v1/voices/{mine['id']}").json()["name"] == "narrator"
    for method in ("GET", "DELETE"):
        r = client.request(method, f"/v1/voices/{theirs['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found"
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": theirs["id"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "voice"
    client.delete(f"/v1/voices/{mine['id']}")
    bob.delete(f"/v1/voices/{theirs['id']}")
    assert client.get(f"/v1/voices/{mine['id']}").status_code == 404


def test_inline_reference_audio_clones_once_and_is_cached(client, server, reference_wav):
    body = {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": "clone",
        "response_format": "pcm",
        "seed": 5,
        "ref_audio": base64.b64encode(reference_wav).decode(),
        "ref_text": "hello there",
    }
    first = client.post("/v1/audio/speech", json=body)
    assert first.status_code == 200, first.text
    before = len(server.state.inline_voices)
    body["ref_audio"] = "data:audio/wav;base64," + body["ref_audio"]
    second = client.post("/v1/audio/speech", json=body)
    assert second.content == first.content  # same voice and seed: same audio
    assert len(server.state.inline_voices) == before  # served from the (key, content hash) cache


@pytest.fixture
def longer_clips(server):
    """A designed clip must be long enough (1 s) to clone from: lift the frame cap for one test."""
    server.state.planner.max_new_tokens = 16
    yield
    server.state.planner.max_new_tokens = FRAMES


def test_design_preview_then_save_as_clone_voice(client, longer_clips):
    design = {
        "instructions": "a deep, calm narrator",
        "input": "This is how I sound today.",
        "seed": 11,
        "max_new_tokens": 16,
        "min_new_tokens": 16,
    }
    r = client.post("/v1/voices/design", json=design)
    assert r.status_code == 200, r.text
    assert r.headers["x-utter-seed"] == "11"
    preview, rate = decode_audio(r.content, "wav")
    assert rate == 24000 and len(preview) > 24000
    again = client.post("/v1/voices/design", json=design)
    assert again.content == r.content  # same seed: the same clip, so what was heard is what gets saved
    r = client.post("/v1/voices/from-design", json={**design, "name": "designed narrator"})
    assert r.status_code == 201, r.text
    voice = r.json()
    assert voice["source"] == "design" and voice["mode"] == "icl" and voice["ref_text"] == design["input"]
    assert voice["meta"]["seed"] == 11 and voice["meta"]["instructions"] == design["instructions"]
    speech = client.post(
        "/v1/audio/speech",
        json={
            "model": "tts-1",
            "input": "Hi.",
            "voice": "designed narrator",
            "response_format": "pcm",
            "seed": 1,
        },
    )
    assert speech.status_code == 200 and len(speech.content) > 0
    client.delete(f"/v1/voices/{voice['id']}")


def test_a_designed_clip_too_short_to_clone_names_the_input_not_ref_audio(client):
    """The server's frame cap (FRAMES) makes a clip shorter than the 1 s a clone needs: the 400 names what
    the caller sent and can change (`input`, the seed), not `ref_audio`, a field this request has not."""
    body = {"name": "too short", "instructions": "a calm narrator", "input": "Hi there.", "seed": 3}
    r = client.post("/v1/voices/from-design", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "input" and error["code"] == "design_too_short", error
    assert "ref_audio" not in error["message"] and "at least 1 s" in error["message"], error
    assert all(v["name"] != "too short" for v in client.get("/v1/voices").json()["data"])


def test_design_via_speech_endpoint(oa_design):
    audio, rate = decode_audio(oa_design, "mp3")
    assert rate == 24000 and np.abs(audio).max() > 0


@pytest.fixture
def oa_design(server) -> bytes:
    oa = OpenAI(base_url=f"{server.url}/v1", api_key=ALICE, max_retries=0)
    return oa.audio.speech.create(
        model="tts-1", voice="design", input="Good evening.", instructions="a bright, cheerful young woman"
    ).content


def test_preset_speaker_with_style_instructions(client):
    r = client.post(
        "/v1/audio/speech",
        json={
            "model": "custom_voice",
            "input": "Good evening.",
            "voice": "Vivian",
            "instructions": "whisper",
            "response_format": "wav",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-utter-model"] == "custom_voice"
