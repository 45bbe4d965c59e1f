"""Agent frameworks' TTS plugins over the server's WebSocket: `livekit` and `pipecat` (optional extras)."""

# Nothing is imported here: each plugin needs its framework, installed with its extra
# (`pip install "utter-tts[livekit]"`, `"utter-tts[pipecat]"`); `session` needs only `websockets`.
