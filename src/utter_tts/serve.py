"""Both HTTP faces on one app: `utter-tts serve [--compat]`, and the web app of the Modal deployment.

The speech server (utter_tts.server) and utter's routes (utter_tts.compat) stand beside each other and know
nothing of each other; this module puts utter's routes on the server's app, where they share its API keys,
its bounded generation pool, its /health fields and its loaded models.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utter_tts.server import settings

# The web stack, the models and utter's routes are imported where they are used, so `serve --help` and
# a bad flag answer at once (they pull in torch).
if TYPE_CHECKING:
    from fastapi import FastAPI

    from utter_tts.compat.job_runners import JobRunner, LocalJobRunner
    from utter_tts.compat.service import CompatService


def build_parser() -> argparse.ArgumentParser:
    """The server's flags, and whether (and how) to serve utter's routes beside them."""
    p = settings.build_parser("utter-tts serve")
    p.add_argument(
        "--compat",
        action="store_true",
        help="also serve utter's routes (/clone, /clone-batch, /design, /submit-job, /job-status, ...) as "
        "its Modal app did, jobs run in this process (docs/deploy-modal.md)",
    )
    p.add_argument(
        "--compat-auth",
        choices=["on", "off"],
        default=os.environ.get("UTTER_TTS_COMPAT_AUTH", "on"),
        help="off: utter's routes take no API key (the others keep theirs), so utter's client works "
        "unchanged; anyone who can reach the port can use them (env UTTER_TTS_COMPAT_AUTH)",
    )
    return p


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of `utter-tts serve` (the top-level CLI passes the arguments after `serve`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compat_auth == "off" and not args.compat:
        parser.error("--compat-auth off goes with --compat")
    from utter_tts.server.app import app_from_args, serve

    app, config = app_from_args(args, parser)
    runner = mount_on_server(app, auth=args.compat_auth == "on") if args.compat else None
    try:
        return serve(app, config, args.log_level)
    finally:
        if runner is not None:
            runner.close()


def add_utter_routes(app: FastAPI, service: Any, runner: Any, auth: bool = True) -> FastAPI:
    """utter's routes on a server app made by `create_app`: the server's API keys guard them (unless
    `auth` is False), their model work waits for the models and runs in the server's pool (429 when
    full), and utter's /health carries the server's model and queue fields."""
    state = app.state.server

    async def run(work):
        state.require_ready()
        return await state.pool.run(work)

    from utter_tts.compat.routes import mount

    keys = state.keys if auth else None
    return mount(app, service, runner, keys=keys, run=run, health_extra=state.health_fields)


def mount_on_server(app: FastAPI, auth: bool = True) -> LocalJobRunner:
    """`utter-tts serve --compat`: utter's routes over the server's loaded Base and VoiceDesign models
    (once they have loaded), capped by its --max-new-tokens, jobs in this process under
    <data-dir>/compat-jobs. Returns the job runner (close it at exit)."""
    from utter_tts.compat.checks import Limits
    from utter_tts.compat.deploy import BASE_MODEL, DESIGN_MODEL
    from utter_tts.compat.job_runners import LocalJobRunner
    from utter_tts.compat.service import CompatService
    from utter_tts.compat.synthesizer import ModelNames

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
    add_utter_routes(app, service, runner, auth)
    return runner


def build_app(
    service: CompatService,
    runner: JobRunner | None,
    api_keys: list[str],
    data_dir: str | os.PathLike,
    compat_auth: bool = True,
    **server_options: Any,
) -> FastAPI:
    """The Modal web app: the speech server (its OpenAI-style routes, voice library, jobs, /metrics) over
    the already loaded models of `service`, plus utter's routes. API keys are always required to start
    and always guard the server's routes; `compat_auth=False` alone opens utter's routes (logged as a
    warning at start)."""
    from utter_tts.server.app import create_app
    from utter_tts.server.registry import ModelRegistry
    from utter_tts.server.settings import ServerConfig

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
    return add_utter_routes(create_app(config, registry), service, runner, compat_auth)


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
        "utter_tts.compat.job_runners",
    ]
    for name in names:
        importlib.import_module(name)
    return names
