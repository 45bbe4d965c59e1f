"""The voice library's single-writer operations (the Modal function `voice_library` calls `apply`).

Modal Volumes are last-write-wins without locks, so exactly one function instance writes the library and
commits; every other container only reads it after `Volume.reload()`. Owners are opaque strings (use the
server's `owner_for_key`)."""

from __future__ import annotations

import os
from typing import Any

from utter_tts.voices.library import VoiceLibrary
from utter_tts.voices.voice import Voice


def apply(
    data_dir: str | os.PathLike,
    op: str,
    owner: str,
    *,
    name: str = "",
    voice_bytes: bytes = b"",
    voice_id: str = "",
) -> Any:
    """`save` (a serialized Voice under `name`) -> record; `delete` -> record; `list` -> records."""
    library = VoiceLibrary(data_dir)
    if op == "save":
        return library.create(owner, Voice.from_bytes(voice_bytes), name).public()
    if op == "delete":
        return library.delete(owner, voice_id).public()
    if op == "list":
        return [r.public() for r in library.list(owner)]
    raise ValueError(f"unknown voice library operation {op!r}; use save, delete or list")
