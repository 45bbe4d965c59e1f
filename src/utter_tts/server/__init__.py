"""The OpenAI-compatible HTTP server, voice library routes and web page."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): the flags in server.settings must not pull in the web stack and torch.
_LAZY = {"create_app": "utter_tts.server.app", "ServerConfig": "utter_tts.server.settings"}

__all__ = ["create_app", "ServerConfig"]

if TYPE_CHECKING:
    from utter_tts.server.app import create_app
    from utter_tts.server.settings import ServerConfig


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
