"""A deployment's models: its settings from UTTER_QWEN_* variables, and both models loaded into a
CompatService. `modal_app/qwen_tts.py` calls these from its @modal.enter hooks; the web app that serves
them is built by utter_tts.serve."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from utter_tts.compat.checks import Limits
from utter_tts.compat.fetch import FetchPolicy
from utter_tts.compat.service import CompatService
from utter_tts.compat.synthesizer import ModelNames
from utter_tts.engine.runner import WEIGHT_MODES
from utter_tts.service.inline_voices import InlineVoices

log = logging.getLogger("utter_tts.compat")

BASE_MODEL, DESIGN_MODEL = ModelNames.base, ModelNames.design  # the 1.7B hub ids


@dataclass
class DeploySettings:
    """What a container loads and how; `from_env()` reads UTTER_QWEN_* variables at container start."""

    base_model: str = BASE_MODEL
    design_model: str = DESIGN_MODEL
    device: str | None = None  # None: CUDA when available
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    use_engine: bool = True
    engine_streams: int = 8  # per model: 8 + 8 streams of 2,048 frames fit an A10G (bench/results)
    engine_frames: int = 2048
    # the engine's talker and code-predictor GEMM weights: bf16 as loaded, or int8 (the A10G: sm_86) / fp8
    # (Ada, Hopper), 8-bit per output channel; not token-exact (bench/quant_report.py)
    engine_weights: str = "bf16"
    cache_size: int = 256
    limits: Limits = field(default_factory=Limits)
    # False serves utter's routes without API keys (UTTER_QWEN_COMPAT_AUTH=off), so utter's client works
    # unchanged; the speech server's routes keep their keys. Anyone with the URL can then spend GPU time.
    compat_auth: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DeploySettings:
        env = dict(os.environ if env is None else env)
        return cls(
            base_model=env.get("UTTER_QWEN_BASE_MODEL", BASE_MODEL),
            design_model=env.get("UTTER_QWEN_DESIGN_MODEL", DESIGN_MODEL),
            device=env.get("UTTER_QWEN_DEVICE") or None,
            dtype=env.get("UTTER_QWEN_DTYPE") or None,
            use_engine=env.get("UTTER_QWEN_ENGINE", "1") != "0",
            engine_streams=int(env.get("UTTER_QWEN_ENGINE_STREAMS", "8")),
            engine_frames=int(env.get("UTTER_QWEN_ENGINE_FRAMES", "2048")),
            engine_weights=weights_setting(env.get("UTTER_QWEN_ENGINE_WEIGHTS", "bf16")),
            cache_size=int(env.get("UTTER_QWEN_PROMPT_CACHE", "256")),
            compat_auth=switch(env.get("UTTER_QWEN_COMPAT_AUTH", "on"), "UTTER_QWEN_COMPAT_AUTH"),
        )


def weights_setting(value: str) -> str:
    """UTTER_QWEN_ENGINE_WEIGHTS: one of the engine's weight modes (whether this GPU runs it is the
    engine's check)."""
    v = value.strip().lower()
    if v not in WEIGHT_MODES:
        raise ValueError(f"UTTER_QWEN_ENGINE_WEIGHTS must be one of {', '.join(WEIGHT_MODES)}, not {value!r}")
    return v


def switch(value: str, name: str) -> bool:
    """on/off (also 1/0, true/false); anything else is a mistake worth stopping for."""
    v = value.strip().lower()
    if v in ("on", "1", "true", "yes"):
        return True
    if v in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"{name} must be on or off, not {value!r}")


def load_service(
    settings: DeploySettings, load_design: bool = True, fetch_policy: FetchPolicy | None = None
) -> CompatService:
    """Load Base (cloning) and, unless `load_design` is False, VoiceDesign, each behind an Engine."""
    from utter_tts.api import TTS

    def load(source: str):
        engine = {
            "max_streams": settings.engine_streams,
            "max_frames": settings.engine_frames,
            "weights": settings.engine_weights,
        }
        tts = TTS.from_pretrained(
            source,
            device=settings.device,
            dtype=settings.dtype,
            engine=engine if settings.use_engine else False,
        )
        if tts.engine is not None:
            # the one-stream graphs now, the others while the engine is idle: a cold container answers
            # its first request after those few captures instead of all of them
            tts.engine.warmup(background=True)
        return tts, tts.engine

    base, base_engine = load(settings.base_model)
    design, design_engine = load(settings.design_model) if load_design else (None, None)
    service = CompatService(
        base=base,
        design_model=design,
        base_engine=base_engine,
        design_engine=design_engine,
        names=ModelNames(settings.base_model, settings.design_model),
        limits=settings.limits,
        cache=InlineVoices(settings.cache_size),
        fetch_policy=fetch_policy or FetchPolicy(),
    )
    info = service.get_model_info()
    log.info(
        "utter compat ready: %s + %s, attention %s, gpu %s",
        settings.base_model,
        settings.design_model if load_design else "-",
        info["attention_implementation"],
        info["gpu"],
    )
    return service
