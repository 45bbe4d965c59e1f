"""Exceptions that name what is wrong with a request, shared by the API, CLI and server."""

from __future__ import annotations


class UtterTTSError(Exception):
    """Base class of every error utter-tts raises on purpose."""


class InvalidInput(UtterTTSError, ValueError):
    """The caller's input is wrong. `param` names the offending argument, `code` is a stable slug
    (the HTTP server maps both into its OpenAI-style error body)."""

    code = "invalid_value"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class AudioError(InvalidInput):
    """Reference audio that cannot be used: unreadable, silent, too short or too long."""

    code = "invalid_audio"


class UnsupportedForModel(InvalidInput):
    """The request asks a checkpoint for something its type cannot do (e.g. a description on Base)."""

    code = "unsupported_for_model"


class CheckpointError(UtterTTSError, OSError):
    """A checkpoint folder or hub id that cannot be loaded (missing files, bad config)."""
