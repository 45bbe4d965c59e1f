"""utter's HTTP routes as a FastAPI router: JSON in, `audio/wav` out, 4xx as `{"detail": ...}`.

Each answers as utter's original Modal app did (modal_app/qwen3_tts/app.py and app_voice_design.py at
f4a1c6a: same fields, messages, statuses and check order; tests/modal_app/test_utter_replay.py holds the
table). `mount(app, service, runner, keys=..., run=...)` adds them to an app: callers are the owners of
their API keys (no keys: everyone is the anonymous owner), model work runs where `run` puts it, and utter's
`/health` replaces the app's own. utter_tts.serve mounts them on the speech server with its keys and its
bounded generation pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from utter_tts.compat.checks import CompatError, size
from utter_tts.compat.job_runners import JobRunner, public_status
from utter_tts.compat.languages import LANGUAGES
from utter_tts.compat.model_info import model_name
from utter_tts.compat.service import CompatService
from utter_tts.service.keys import KeyChecker
from utter_tts.textcheck import printable

log = logging.getLogger("utter_tts.compat")

Provider = Callable[[], Any]
Owner = Callable[[Request], str]
Runner = Callable[[Callable[[], Any]], Awaitable[Any]]
RESULT_WAIT_S = 5.0  # the original's /job-result waited this long (`get(timeout=5)`) before its 202
ANONYMOUS = KeyChecker([], enabled=False).owner  # every caller is the same owner: routes without keys


class UtterRoutes:
    """The handlers, over a service and a job runner (objects, or zero-argument callables that return
    them: models load after the app is built), who the caller is (`owner`), where blocking model work
    runs (`run`) and what /health adds (`health_extra`)."""

    def __init__(
        self,
        service: CompatService | Provider,
        runner: JobRunner | Provider | None = None,
        owner: Owner = ANONYMOUS,
        run: Runner = run_in_threadpool,
        health_extra: Callable[[], dict[str, Any]] | None = None,
        result_wait_s: float = RESULT_WAIT_S,
    ):
        self._service = service
        self._runner = runner
        self.owner = owner
        self.run = run
        self.health_extra = health_extra
        self.result_wait_s = result_wait_s

    def service(self) -> CompatService | None:
        return _get(self._service)

    def jobs(self) -> JobRunner:
        runner = _get(self._runner)
        if runner is None:
            raise CompatError("jobs are not configured on this deployment", status=503)
        return runner

    async def _generate(self, request: Request, work: Callable[[CompatService, str, dict], Any]) -> Any:
        """The caller, the body, then `work(service, caller, body)` where model work runs; a CompatError
        becomes its `{"detail": ...}` answer."""
        caller = self.owner(request)
        try:
            body = await _body(request)
            return await self.run(lambda: work(self.service(), caller, body))
        except CompatError as e:
            return detail(e.message, e.status)

    # ---- synthesis -----------------------------------------------------------------------------------
    async def clone(self, request: Request):
        out = await self._generate(request, lambda s, caller, body: s.clone_request(caller, body))
        return out if isinstance(out, Response) else _wav(out)

    async def clone_batch(self, request: Request):
        out = await self._generate(request, lambda s, caller, body: s.clone_batch_request(caller, body))
        return out if isinstance(out, Response) else JSONResponse(out)

    async def design(self, request: Request):
        out = await self._generate(request, lambda s, caller, body: s.design_request(body))
        return out if isinstance(out, Response) else _wav(out, "designed_voice.wav")

    # ---- facts ---------------------------------------------------------------------------------------
    async def health(self, request: Request):
        service = self.service()
        info = service.get_model_info() if service is not None else {}
        body = {
            "status": "healthy" if service is not None else "loading",
            "model": model_name(info["model_id"]) if info else None,
            "gpu": info.get("gpu", "none"),
            "attention_implementation": info.get("attention_implementation"),
            "supported_languages": list(LANGUAGES),
        }
        if self.health_extra is not None:
            body.update(self.health_extra())
        return JSONResponse(body, status_code=200 if service is not None else 503)

    async def languages(self):
        return {
            "languages": list(LANGUAGES),
            "default": "Auto",
            "note": "Use 'Auto' for automatic language detection",
        }

    # ---- jobs ----------------------------------------------------------------------------------------
    async def submit_job(self, request: Request):
        caller = self.owner(request)
        try:
            body = await _body(request)
            job_id = await run_in_threadpool(self.jobs().submit, caller, body)
        except CompatError as e:
            return detail(e.message, e.status)
        return {"job_id": job_id, "status": "submitted", "text_length": size(body.get("text")) or 0}

    async def job_status(self, request: Request):
        caller = self.owner(request)
        job_id = _query_job_id(request)
        if isinstance(job_id, Response):
            return job_id
        try:
            state = await run_in_threadpool(self.jobs().state, caller, job_id)
        except CompatError as e:
            return detail(e.message, e.status)
        return public_status(job_id, state)

    async def job_result(self, request: Request):
        caller = self.owner(request)
        job_id = _query_job_id(request)
        if isinstance(job_id, Response):
            return job_id
        deadline = time.monotonic() + self.result_wait_s
        try:
            while True:
                wav = await run_in_threadpool(self.jobs().result, caller, job_id)
                if wav is not None:
                    return _wav(wav)
                if time.monotonic() >= deadline:
                    return detail("Job still processing", 202)
                await asyncio.sleep(min(0.1, self.result_wait_s))
        except CompatError as e:
            return detail(e.message, e.status)

    async def cancel_job(self, request: Request):
        caller = self.owner(request)
        try:
            body = await _body(request)
            job_id = body.get("job_id")
            if not job_id:
                raise CompatError("'job_id' is required")
            if not await run_in_threadpool(self.jobs().cancel, caller, job_id):
                raise CompatError("Failed to cancel: Job not found", status=404)
        except CompatError as e:
            return detail(e.message, e.status)
        return {"job_id": job_id, "status": "cancelled"}


def build_router(
    service: CompatService | Provider, runner: JobRunner | Provider | None = None, **options: Any
) -> APIRouter:
    """utter's routes over `service` and `runner`; `options` are UtterRoutes' (owner, run, ...)."""
    routes = UtterRoutes(service, runner, **options)
    router = APIRouter()
    router.add_api_route("/clone", routes.clone, methods=["POST"])
    router.add_api_route("/clone-batch", routes.clone_batch, methods=["POST"])
    router.add_api_route("/design", routes.design, methods=["POST"])
    router.add_api_route("/health", routes.health, methods=["GET"])
    router.add_api_route("/languages", routes.languages, methods=["GET"])
    router.add_api_route("/submit-job", routes.submit_job, methods=["POST"])
    router.add_api_route("/job-status", routes.job_status, methods=["GET"])
    router.add_api_route("/job-result", routes.job_result, methods=["GET"])
    # The original's function was `cancel_job` (its URL ends in cancel-job); earlier versions of this
    # deployment documented /job-cancel: both answer.
    router.add_api_route("/cancel-job", routes.cancel_job, methods=["POST"])
    router.add_api_route("/job-cancel", routes.cancel_job, methods=["POST"])
    return router


def mount(
    app: FastAPI,
    service: CompatService | Provider,
    runner: JobRunner | Provider | None = None,
    keys: KeyChecker | None = None,
    **options: Any,
) -> FastAPI:
    """Add utter's routes to `app`, replacing its own /health. With `keys` every route but /health and
    /languages wants one of them; without, the routes are open, which is logged loudly. `options` are
    UtterRoutes' (run, health_extra, result_wait_s)."""
    if keys is None:
        log.warning(
            "UTTER'S ROUTES ARE OPEN: /clone, /clone-batch, /design and the job routes take no API key "
            "(compat auth off). Anyone who knows this URL can spend its GPU time; keep the URL private "
            "or put Modal proxy auth in front of it."
        )
    app.router.routes[:] = [
        r for r in app.router.routes if not (getattr(r, "path", None) == "/health" and "GET" in r.methods)
    ]
    owner = keys.owner if keys is not None else ANONYMOUS
    app.include_router(build_router(service, runner, owner=owner, **options))
    return app


def detail(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": printable(message)}, status_code=status)


def _get(x: Any) -> Any:
    return x() if callable(x) and not isinstance(x, (CompatService, JobRunner)) else x


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, RecursionError):
        raise CompatError("Invalid JSON body") from None
    if not isinstance(body, dict):
        raise CompatError("Request body must be a JSON object")
    return body


def _wav(data: bytes, filename: str = "output.wav") -> Response:
    """The original's audio response: WAV with its Content-Disposition (and Content-Length)."""
    return Response(
        data, media_type="audio/wav", headers={"Content-Disposition": f"attachment; filename={filename}"}
    )


def _query_job_id(request: Request) -> str | JSONResponse:
    """The original's `job_id: str` query parameter: FastAPI's 422 when absent, its 400 when empty."""
    job_id = request.query_params.get("job_id")
    if job_id is None:
        missing = {"type": "missing", "loc": ["query", "job_id"], "msg": "Field required", "input": None}
        return JSONResponse({"detail": [missing]}, status_code=422)
    if not job_id:
        return detail("'job_id' is required")
    return job_id
