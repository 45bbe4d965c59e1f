"""The FastAPI application factory: state, lifespan (model loading, graceful shutdown), routes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading
import time
from contextlib import asynccontextmanager
from importlib import metadata, resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from utter_tts.server import routes_jobs, routes_speech, routes_voices, routes_websocket
from utter_tts.server.job_manager import JobManager
from utter_tts.server.limits import BodyLimit
from utter_tts.server.metrics import CONTENT_TYPE_LATEST, Metrics
from utter_tts.server.openai_errors import install_error_handlers, request_id
from utter_tts.server.planner import Planner
from utter_tts.server.pool import GenerationPool
from utter_tts.server.registry import ModelRegistry
from utter_tts.server.settings import ServerConfig, config_from_args
from utter_tts.service.http_errors import APIError, device_fault_error
from utter_tts.service.inline_voices import InlineVoices
from utter_tts.service.keys import KeyChecker, redact_server_logs
from utter_tts.voices.library import VoiceLibrary

log = logging.getLogger("utter_tts.server")


class ServerState:
    """Everything the routes share, reachable as `request.app.state.server`."""

    def __init__(self, config: ServerConfig, registry: ModelRegistry):
        self.config = config
        self.registry = registry
        self.library = VoiceLibrary(
            config.data_dir,
            max_voices_per_owner=config.max_voices_per_key,
            cache_size=config.voice_cache_size,
        )
        self.pool = GenerationPool(
            config.max_concurrency, config.max_queue, config.retry_after_s, config.chunk_delay_s
        )
        self.metrics = Metrics(self.pool)
        self.keys = KeyChecker(config.api_keys, config.auth_enabled)
        self.inline_voices = InlineVoices(config.voice_cache_size)
        self.planner = Planner(
            registry,
            self.library,
            self.inline_voices,
            config.max_input_chars,
            config.max_ref_seconds,
            config.max_new_tokens,
            config.openai_voices,
        )
        self.jobs = JobManager(self, config.data_dir / "jobs")
        # A fatal failure sets a non-zero status and asks the running server to stop (see `serve`).
        self.exit_code = 0
        self.request_stop = lambda: None
        self.fault: str | None = None  # a sticky device error: this process cannot serve any more
        self.pool.on_device_fault = self.device_fault

    def stop_with(self, code: int, why: str) -> None:
        """End the process with status `code` after the usual graceful shutdown: for failures that
        serving on would only hide from a supervisor."""
        log.error("stopping: %s", why)
        self.exit_code = code
        self.request_stop()

    def device_fault(self, reason: str) -> None:
        """The GPU context is poisoned (illegal memory access, device-side assert, ECC, launch failure):
        every later kernel would fail too. Refuse new work (503 + Retry-After), say so on /health, and
        after `fault_drain_s` stop with status 1 so Modal or a supervisor starts a fresh process."""
        if self.fault is not None:
            return
        self.fault = reason
        self.exit_code = 1
        log.critical("GPU fault; refusing work and exiting in %.0f s: %s", self.config.fault_drain_s, reason)
        asyncio.get_running_loop().call_later(self.config.fault_drain_s, self.request_stop)

    @property
    def sample_rate(self) -> int:
        for m in self.registry.models.values():
            return int(getattr(m.tts, "sample_rate", 24000))
        return 24000

    def require_ready(self) -> None:
        if self.fault is not None:
            raise device_fault_error(self.config.retry_after_s)
        if self.pool.closing:
            raise APIError(503, "server is shutting down", "shutting_down", headers={"Retry-After": "5"})
        if not self.registry.ready.is_set():
            # The load error itself goes to the log and /health (operators), not to API clients.
            why = "models failed to load" if self.registry.load_error else "models are still loading"
            raise APIError(503, why, "not_ready", headers={"Retry-After": "5"})

    def health_fields(self) -> dict[str, Any]:
        """The models and the queue, as /health reports them."""
        return {
            "models": [m.describe() for m in self.registry.models.values()],
            "queue": {"active": self.pool.active, "waiting": self.pool.waiting},
        }


def create_app(config: ServerConfig, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the app. Without a registry the models in `config.models` load in a background thread at
    startup (so /health answers "loading" meanwhile); tests and embedders may pass a loaded one."""
    config.check()
    redact_server_logs()
    registry = registry or ModelRegistry()
    state = ServerState(config, registry)

    def load_models() -> None:
        registry.load(
            config.models,
            config.device,
            config.dtype,
            engine=config.engine,
            engine_streams=config.engine_streams,
            weights=config.weights,
        )
        if registry.load_error and config.on_load_error == "exit":
            state.stop_with(1, f"model loading failed: {registry.load_error}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not registry.ready.is_set() and config.models:
            threading.Thread(target=load_models, name="utter-load", daemon=True).start()
        elif not config.models and registry.models:
            registry.ready.set()
        elif not config.models and not registry.models:
            registry.load_error = "no models configured"
        state.jobs.resume_interrupted()  # jobs a dead process left half done go on once the models are in
        yield
        # Graceful shutdown: refuse new work, let running generations finish briefly, then cancel.
        state.pool.closing = True
        await state.pool.drain(config.shutdown_grace_s)
        state.pool.cancel_all()
        state.jobs.cancel_all()
        await asyncio.sleep(0)
        state.pool.shutdown()

    # /docs is our own page (below): FastAPI's Swagger UI loads from another host, blank offline
    app = FastAPI(title="utter-tts", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)
    # Room for a reference clip sent inline as base64 (4/3 of its size) plus the JSON around it.
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes * 4 // 3 + 256 * 1024)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.monotonic()
        # Every response names its request (LiveKit warns on each one that does not); an internal error,
        # answered outside this middleware, reads it from the request's state.
        request.state.request_id = request_id(request.headers.get("x-request-id"))
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state.metrics.requests.labels(route=path, status=str(response.status_code)).inc()
        response.headers.setdefault("X-Process-Time", f"{time.monotonic() - started:.3f}")
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    app.include_router(routes_speech.router)
    app.include_router(routes_voices.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_websocket.router)

    @app.get("/health")
    async def health() -> Any:
        body = {"status": "ok" if registry.ready.is_set() else "loading", **state.health_fields()}
        if state.pool.closing:
            body["status"] = "shutting_down"
        if registry.load_error:
            body["status"], body["error"] = "failed", registry.load_error
        if state.fault is not None:
            body["status"], body["error"] = "failed", f"device fault: {state.fault}"
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        state.keys.owner(request)
        return {"object": "list", "data": [m.describe() for m in registry.models.values()]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return _static_page("index.html")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return _static_page("docs.html")

    return app


def _static_page(name: str) -> HTMLResponse:
    """One of the package's own pages (server/static), never cached by the browser."""
    page = resources.files("utter_tts.server").joinpath(f"static/{name}").read_text("utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


def _version() -> str:
    """The installed package's version (the server sits below the package's __init__, so not from it)."""
    try:
        return metadata.version("utter-tts")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def app_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[FastAPI, ServerConfig]:
    """Logging set up, then the app the parsed flags ask for. A bad setting ends in `parser.error`; a
    taken port, and (with --on-load-error exit) a model that cannot load, end the process with status 2
    and one line, before the port is bound or the data directory is created."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        config.check()
    except ValueError as e:
        parser.error(str(e))
    why = port_taken(config.host, config.port)
    if why:
        parser.exit(
            2, f"{parser.prog}: error: argument --port: cannot bind {config.host}:{config.port}: {why}\n"
        )
    registry = None
    if config.on_load_error == "exit":
        registry = ModelRegistry()
        try:
            registry.load_all(
                config.models,
                config.device,
                config.dtype,
                config.engine,
                config.engine_streams,
                config.weights,
            )
        except Exception as e:
            parser.exit(2, f"{parser.prog}: error: a model failed to load: {type(e).__name__}: {e}\n")
    return create_app(config, registry), config


def port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound now (None if it can). Checked before the slow start-up; the real
    bind comes later, so a race stays possible and uvicorn then reports it."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return str(e)
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            return e.strerror or str(e)
    return None


def serve(app: FastAPI, config: ServerConfig, log_level: str = "info") -> int:
    """Run `app` under uvicorn on the configured address until it is stopped; returns the exit status
    (non-zero when the server stopped itself over a failure, e.g. models that failed to load)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level.lower(),
            timeout_graceful_shutdown=int(config.shutdown_grace_s) + 5,
            ws_max_size=4 * 1024 * 1024,
        )
    )
    state = app.state.server
    state.request_stop = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.exit_code:
        return state.exit_code
    return 0 if server.started else 1  # uvicorn could not bind (it has logged why)
