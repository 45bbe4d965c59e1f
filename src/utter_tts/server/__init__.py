"""The OpenAI-compatible HTTP server, voice library routes and web page."""

from utter_tts.server.app import create_app
from utter_tts.server.settings import ServerConfig

__all__ = ["create_app", "ServerConfig"]
