"""Assemble a deployment: load both models into a CompatService and build the one ASGI app (the speech
server plus utter's routes). `modal_app/qwen_tts.py` calls these from its @modal.enter / @modal.asgi_app;
`utter-tts serve --compat` mounts utter's routes on the plain server with `mount_on_server`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utter_tts.compat.cache import PromptCache
from utter_tts.compat.fetch import FetchPolicy
from utter_tts.compat.service import CompatService, Limits, ModelNames

if TYPE_CHECKING:  # the web stack loads only when an app is built (loading models needs none of it)
    from fastapi import FastAPI

    from utter_tts.compat.jobs import JobRunner

log = logging.getLogger("utter_tts.compat")

BASE_MODEL = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
DESIGN_MODEL = "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"


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
    cache_size: int = 256
    limits: Limits = field(default_factory=Limits)
    # False serves utter's routes without API keys (UTTER_QWEN_COMPAT_AUTH=off), so utter's client works
    # unchanged; the server's own routes keep their keys. Anyone with the URL can then spend GPU time.
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
            cache_size=int(env.get("UTTER_QWEN_PROMPT_CACHE", "256")),
            compat_auth=switch(env.get("UTTER_QWEN_COMPAT_AUTH", "on"), "UTTER_QWEN_COMPAT_AUTH"),
        )


def switch(value: str, name: str) -> bool:
    """on/off (also 1/0, true/false); anything else is a mistake worth stopping for."""
    v = value.strip().lower()
    if v in ("on", "1", "true", "yes"):
        return True
    if v in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"{name} must be on or off, not {value!r}")


def warm_imports() -> list[str]:
    """Import what serving needs without touching a GPU, so a memory snapshot taken now holds it."""
    import importlib

    names = [
        "torch",
        "numpy",
        "av",
        "soxr",
        "httpx",
        "fastapi",
        "utter_tts.api",
        "utter_tts.engine.engine",
        "utter_tts.server.app",
        "utter_tts.compat.routes",
        "utter_tts.compat.jobs",
    ]
    for name in names:
        importlib.import_module(name)
    return names


def load_service(
    settings: DeploySettings, load_design: bool = True, fetch_policy: FetchPolicy | None = None
) -> CompatService:
    """Load Base (cloning) and, unless `load_design` is False, VoiceDesign, each behind an Engine."""
    from utter_tts.api import TTS

    def load(source: str):
        engine = {"max_streams": settings.engine_streams, "max_frames": settings.engine_frames}
        tts = TTS.from_pretrained(
            source,
            device=settings.device,
            dtype=settings.dtype,
            engine=engine if settings.use_engine else False,
        )
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
        cache=PromptCache(settings.cache_size),
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


def build_app(
    service: CompatService,
    runner: JobRunner | Any | None,
    api_keys: list[str],
    data_dir: str | os.PathLike,
    compat_auth: bool = True,
    **server_options: Any,
) -> FastAPI:
    """The speech server (its OpenAI-style routes, voice library, jobs, /metrics) with the already loaded
    models, plus utter's routes. API keys are always required to start and always guard the server's
    routes; `compat_auth=False` alone opens utter's routes (logged as a warning at start)."""
    from utter_tts.compat.routes import mount
    from utter_tts.server.app import create_app
    from utter_tts.server.config import ServerConfig
    from utter_tts.server.registry import ModelRegistry

    registry = ModelRegistry()
    if service.base is not None:
        registry.add(service.names.base, service.base)
    if service.design_model is not None:
        registry.add(service.names.design, service.design_model)
    registry.ready.set()
    config = ServerConfig(
        models=[],
        host="0.0.0.0",
        data_dir=Path(data_dir),
        device=str(getattr(service.base or service.design_model, "device", "cpu")),
        api_keys=list(api_keys),
        auth="on",
        **server_options,
    )
    app = create_app(config, registry)
    return mount(app, service, runner, auth=compat_auth)


def mount_on_server(app: FastAPI, auth: bool = True) -> JobRunner:
    """utter's routes on a server made by `create_app` (`utter-tts serve --compat`): its loaded Base and
    VoiceDesign models (once they have loaded) behind a CompatService capped by the server's
    --max-new-tokens, jobs in this process under <data-dir>/compat-jobs. Returns the runner (close it
    at exit)."""
    from utter_tts.compat.jobs import LocalJobRunner
    from utter_tts.compat.routes import mount

    state = app.state.server
    built: list[CompatService] = []

    def service() -> CompatService | None:
        if not built and state.registry.ready.is_set():  # models load in a thread after start
            first = {t: (state.registry.of_type(t) or [None])[0] for t in ("base", "voice_design")}
            base, design = first["base"], first["voice_design"]
            built.append(
                CompatService(
                    base=base.tts if base else None,
                    design_model=design.tts if design else None,
                    names=ModelNames(
                        base.source if base else BASE_MODEL, design.source if design else DESIGN_MODEL
                    ),
                    limits=Limits(frame_cap=state.config.max_new_tokens),
                )
            )
        return built[0] if built else None

    runner = LocalJobRunner(service, state.config.data_dir / "compat-jobs")
    mount(app, service, runner, auth=auth)
    return runner
