"""The plugins' shared WebSocket client, without a framework: URLs, whole samples out of any chunking, and
how a session that ends without session.done is reported."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from utter_tts.integrations.session import SessionError, SpeechSession, ws_url


@pytest.mark.parametrize(
    "base, url",
    [
        ("http://host:8000", "ws://host:8000/v1/audio/speech/stream"),
        ("http://host:8000/v1/", "ws://host:8000/v1/audio/speech/stream"),
        ("https://tts.example/v1", "wss://tts.example/v1/audio/speech/stream"),
    ],
)
def test_the_session_url_of_a_base_url(base, url):
    assert ws_url(base) == url


class FakeSocket:
    """What websockets' connection gives `recv`, message by message; then the close it ends with."""

    def __init__(self, messages, close_code=None):
        self.messages = list(messages)
        self.close_code = close_code

    async def recv(self):
        if self.messages:
            return self.messages.pop(0)
        raise ConnectionClosedError(Close(self.close_code, ""), None)


def collect(session: SpeechSession) -> list[bytes]:
    async def run():
        return [chunk async for chunk in session.audio()]

    return asyncio.run(run())


def test_audio_comes_out_in_whole_16_bit_samples():
    ws = FakeSocket([b"\x01", b"\x02\x03", b"\x04\x05\x06", json.dumps({"type": "session.done"})])
    session = SpeechSession(ws, {"sample_rate": 24000})
    assert collect(session) == [b"\x01\x02", b"\x03\x04\x05\x06"]
    assert session.done == {"type": "session.done"}


def test_a_refused_piece_of_text_does_not_end_the_session():
    refused = {"type": "error", "error": {"message": "bad text", "code": "invalid_text"}}
    ws = FakeSocket([json.dumps(refused), b"\x00\x00", json.dumps({"type": "session.done"})])
    assert collect(SpeechSession(ws, {"sample_rate": 24000})) == [b"\x00\x00"]


@pytest.mark.parametrize("code, status", [(1011, 500), (1013, 503), (1008, 400)])
def test_a_session_closed_without_done_is_an_error_with_the_servers_reason(code, status):
    failed = {"type": "error", "error": {"message": "engine fault", "code": "internal_error"}}
    ws = FakeSocket([b"\x00\x00", json.dumps(failed)], close_code=code)
    with pytest.raises(SessionError, match="engine fault") as info:
        collect(SpeechSession(ws, {"sample_rate": 24000}))
    assert info.value.status == status and info.value.code == "internal_error"
    assert info.value.retryable == (status >= 500)
