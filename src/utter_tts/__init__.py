"""utter-tts: fast, dependable serving of Qwen3-TTS in our own lean PyTorch.

The public API, importable from here:

    from utter_tts import TTS, Voice, Request, Engine
    from utter_tts import UtterTTSError, InvalidInput, AudioError, UnsupportedForModel, CheckpointError
    from utter_tts import Busy, Cancelled, EngineFault

Names load on first use (PEP 562), so `import utter_tts` (and the CLI's start) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from utter_tts.errors import AudioError, CheckpointError, InvalidInput, UnsupportedForModel, UtterTTSError

__version__ = "0.1.0"

# name -> module that defines it (imported when the name is first asked for)
_LAZY = {
    "TTS": "utter_tts.api",
    "Voice": "utter_tts.voices.voice",
    "Request": "utter_tts.request",
    "Engine": "utter_tts.engine.engine",
    "Busy": "utter_tts.engine.scheduler",
    "Cancelled": "utter_tts.engine.scheduler",
    "EngineFault": "utter_tts.engine.scheduler",
}

__all__ = [
    "TTS",
    "Voice",
    "Request",
    "Engine",
    "UtterTTSError",
    "InvalidInput",
    "AudioError",
    "UnsupportedForModel",
    "CheckpointError",
    "Busy",
    "Cancelled",
    "EngineFault",
    "__version__",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'utter_tts' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from utter_tts.api import TTS
    from utter_tts.engine.engine import Engine
    from utter_tts.engine.scheduler import Busy, Cancelled, EngineFault
    from utter_tts.request import Request
    from utter_tts.voices.voice import Voice
