"""The package's public face: everything the README promises imports from `utter_tts` itself."""

from __future__ import annotations

import subprocess
import sys

import utter_tts


def test_public_api_imports_from_the_top():
    from utter_tts import (  # noqa: F401
        TTS,
        AudioError,
        Busy,
        Cancelled,
        CheckpointError,
        Engine,
        EngineFault,
        InvalidInput,
        Request,
        UnsupportedForModel,
        UtterTTSError,
        Voice,
    )
    from utter_tts.api import TTS as api_tts
    from utter_tts.engine.engine import Engine as engine_engine

    assert TTS is api_tts and Engine is engine_engine
    assert issubclass(AudioError, InvalidInput) and issubclass(InvalidInput, UtterTTSError)
    assert issubclass(Busy, UtterTTSError) and issubclass(CheckpointError, UtterTTSError)
    assert set(utter_tts.__all__) <= set(dir(utter_tts))
    for name in utter_tts.__all__:
        assert getattr(utter_tts, name) is not None


def test_unknown_names_raise_attribute_error():
    try:
        utter_tts.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("utter_tts.NoSuchThing should not exist")


def test_importing_the_package_does_not_import_torch():
    """The CLI starts (and answers --help) without paying for torch; names load when first used."""
    code = "import sys, utter_tts, utter_tts.cli; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
