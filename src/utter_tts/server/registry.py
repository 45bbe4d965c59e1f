"""Loaded models by name, and which one serves a request (by name or by what the voice needs)."""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from utter_tts.errors import InvalidInput

log = logging.getLogger("utter_tts.server")

# Names OpenAI clients send; they mean "whichever loaded model can do what the voice asks".
GENERIC_MODEL_NAMES = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "auto", "utter-tts", "qwen3-tts"}
# OpenAI's dated snapshots of its own TTS models (gpt-4o-mini-tts-2025-03-20, tts-1-1106) mean the same:
# one of its names, then -YYYY-MM-DD (month 01-12, day 01-31) or -NNNN. Our own names take no suffix.
DATED_OPENAI_MODEL = re.compile(
    r"(?:tts-1|tts-1-hd|gpt-4o-mini-tts)-(?:[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])|[0-9]{4})"
)


def is_generic_model(name: str) -> bool:
    """Whether `name` asks for no model in particular: a generic name or a dated OpenAI one."""
    name = name.lower()
    return name in GENERIC_MODEL_NAMES or DATED_OPENAI_MODEL.fullmatch(name) is not None


@dataclass
class LoadedModel:
    """One checkpoint in memory with the name clients use for it."""

    id: str
    source: str
    tts: Any

    @property
    def model_type(self) -> str:
        return self.tts.model_type

    @property
    def languages(self) -> list[str]:
        return list(getattr(self.tts, "languages", None) or ["auto"])

    @property
    def speakers(self) -> list[str]:
        return list(getattr(self.tts, "speakers", None) or [])

    @property
    def takes_instructions(self) -> bool:
        """Whether its voices can be styled by instructions: not Base's clones, nor the preset speakers of
        a 0.6B CustomVoice checkpoint (it refuses them)."""
        if self.model_type == "base":
            return False
        config = getattr(getattr(self.tts, "pipeline", None), "config", None)
        return not (self.model_type == "custom_voice" and getattr(config, "tts_model_size", "") == "0b6")

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "owned_by": "utter-tts",
            "model_type": self.model_type,
            "languages": self.languages,
            "speakers": self.speakers,
            "sample_rate": getattr(self.tts, "sample_rate", 24000),
        }


def model_id_for(source: str) -> str:
    """A short, stable name for a folder or hub id: its last path component, lower-cased."""
    return os.path.basename(os.path.normpath(str(source))).lower() or str(source).lower()


class ModelRegistry:
    """Holds the models; `ready` flips once all have loaded (what /health reports)."""

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}
        self.ready = threading.Event()
        self.load_error: str | None = None

    def add(self, source: str, tts: Any, model_id: str | None = None) -> LoadedModel:
        mid = model_id or model_id_for(source)
        if mid in self.models:
            mid = f"{mid}-{len(self.models)}"
        loaded = LoadedModel(id=mid, source=str(source), tts=tts)
        self.models[mid] = loaded
        return loaded

    def load_all(
        self,
        sources: list[str],
        device: str,
        dtype: str,
        engine: str = "off",
        engine_streams: int = 16,
        weights: str = "bf16",
    ) -> None:
        """Load every checkpoint (blocking) and set `ready`; the first failure raises. weights: the engine's
        (`Engine`); 8-bit without an engine is refused, naming it."""
        from utter_tts.api import TTS
        from utter_tts.device import resolve_device

        use_engine = engine == "on" or (engine == "auto" and resolve_device(device).type == "cuda")
        if weights != "bf16" and not use_engine:
            raise InvalidInput(
                f"--weights {weights} needs the engine (on by default on CUDA; --engine on)", param="weights"
            )
        for src in sources:
            log.info("loading %s (device %s, dtype %s)", src, device or "auto", dtype or "auto")
            tts = TTS.from_pretrained(
                src,
                device=device,
                dtype=dtype,
                engine={"max_streams": engine_streams, "weights": weights} if use_engine else False,
            )
            if tts.engine is not None:  # the one-stream graphs now, the others while it is idle
                tts.engine.warmup(background=True)
            loaded = self.add(src, tts)
            log.info(
                "loaded %s as %r (%s) on %s in %s",
                src,
                loaded.id,
                loaded.model_type,
                tts.device,
                str(tts.dtype).removeprefix("torch."),
            )
        self.ready.set()

    def load(self, *args: Any, **kwargs: Any) -> None:
        """`load_all` (same arguments) for a server already listening: a failure is logged and kept in
        `load_error` (what /health reports) instead of raised."""
        try:
            self.load_all(*args, **kwargs)
        except Exception as e:
            log.exception("model loading failed")
            self.load_error = f"{type(e).__name__}: {e}"

    def of_type(self, model_type: str) -> list[LoadedModel]:
        return [m for m in self.models.values() if m.model_type == model_type]

    def preset_speaker(self, name: str) -> tuple[LoadedModel, str] | None:
        """A CustomVoice model that has `name` as a preset speaker (case-insensitive)."""
        want = name.strip().lower()
        for m in self.of_type("custom_voice"):
            for spk in m.speakers:
                if spk.lower() == want:
                    return m, spk
        return None

    def pick(self, requested: str | None, model_type: str, param: str = "model") -> LoadedModel:
        """The model for a request: the named one if it is of the needed type, else the first of that type."""
        if requested and not is_generic_model(requested):
            m = self.models.get(requested.lower())
            if m is None:
                raise InvalidInput(
                    f"model {requested!r} is not loaded; loaded: {', '.join(self.models) or 'none'}",
                    param=param,
                    code="model_not_found",
                )
            if m.model_type != model_type:
                raise InvalidInput(
                    f"model {m.id!r} is a {m.model_type} model; this request needs a {model_type} model",
                    param=param,
                    code="unsupported_for_model",
                )
            return m
        found = self.of_type(model_type)
        if not found:
            raise InvalidInput(
                f"this request needs a {model_type} model and none is loaded",
                param=param,
                code="unsupported_for_model",
            )
        return found[0]
