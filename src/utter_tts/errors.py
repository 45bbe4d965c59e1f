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


# CUDA errors after which the process's context is unusable: every later kernel fails too, so the only
# cure is a fresh process (the CUDA runtime's "sticky" errors; torch raises them with these words).
STICKY_DEVICE_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "uncorrectable ECC error",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "hardware stack error",
    "CUDA_ERROR_ILLEGAL_ADDRESS",
    "CUDA_ERROR_LAUNCH_FAILED",
    "CUDA_ERROR_ECC_UNCORRECTABLE",
)


def sticky_device_error(error: BaseException | None) -> str | None:
    """The message of a CUDA error that poisons the process's context (in `error` or what caused it), or
    None for any other error: those fail one request and the process serves on."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if any(words.lower() in text.lower() for words in STICKY_DEVICE_ERRORS):
            return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
        error = error.__cause__ or error.__context__
    return None
