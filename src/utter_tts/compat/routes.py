"""utter's HTTP routes as a FastAPI router: JSON in, `audio/wav` out, 400s as `{"detail": ...}`.

Mount it on the server app with `mount(app, service, runner)`: the generation routes then share the
server's API keys (callers are the key owners the server derives) and its bounded generation pool, and
utter's `/health` replaces the server's (keeping the server's fields).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from utter_tts.compat.jobs import JobRunner
from utter_tts.compat.languages import LANGUAGES
from utter_tts.compat.service import CompatError, CompatService

Provider = Callable[[], Any]


def _get(x: Any) -> Any:
    return x() if callable(x) and not isinstance(x, (CompatService, JobRunner)) else x


def detail(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _server_state(request: Request):
    return getattr(request.app.state, "server", None)


def default_owner(request: Request) -> str:
    """The caller: the server's key owner (401 without a valid key when keys are on)."""
    state = _server_state(request)
    if state is None:
        return "anonymous"
    return state.keys.owner(request)


async def _run(request: Request, fn: Callable[[], Any]) -> Any:
    """Blocking model work: in the server's bounded pool when mounted on it (429 when full)."""
    state = _server_state(request)
    if state is not None:
        state.require_ready()
        return await state.pool.run(fn)
    return await run_in_threadpool(fn)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise CompatError("Invalid JSON body") from None
    if not isinstance(body, dict):
        raise CompatError("Request body must be a JSON object")
    return body


def _wav(data: bytes) -> Response:
    return Response(data, media_type="audio/wav")


def build_router(
    service: CompatService | Provider,
    runner: JobRunner | Provider | None = None,
    owner: Callable[[Request], str] = default_owner,
    health_extra: Callable[[Request], dict[str, Any]] | None = None,
) -> APIRouter:
    """`service` and `runner` may be objects or zero-argument callables (models load after import)."""
    router = APIRouter()

    def svc() -> CompatService:
        return _get(service)

    def jobs() -> JobRunner:
        r = _get(runner)
        if r is None:
            raise CompatError("jobs are not configured on this deployment", status=503)
        return r

    async def handle(request: Request, work: Callable[[str, dict[str, Any]], Any]):
        caller = owner(request)
        try:
            body = await _body(request)
            return await _run(request, lambda: work(caller, body))
        except CompatError as e:
            return detail(e.message, e.status)

    @router.post("/clone")
    async def clone(request: Request):
        out = await handle(request, lambda caller, body: svc().clone_request(caller, body))
        return out if isinstance(out, Response) else _wav(out)

    @router.post("/clone-batch")
    async def clone_batch(request: Request):
        out = await handle(request, lambda caller, body: svc().clone_batch_request(caller, body))
        return out if isinstance(out, Response) else JSONResponse(out)

    @router.post("/design")
    async def design(request: Request):
        out = await handle(request, lambda caller, body: svc().design_request(body))
        return out if isinstance(out, Response) else _wav(out)

    @router.get("/health")
    async def health(request: Request):
        s = svc()
        info = s.get_model_info() if s is not None else {}
        state = _server_state(request)
        ready = s is not None and (state is None or state.registry.ready.is_set())
        body = {
            "status": "healthy" if ready else "loading",
            "model": info.get("model"),
            "gpu": info.get("gpu"),
            "attention_implementation": info.get("attention_implementation"),
            "supported_languages": list(LANGUAGES),
        }
        if health_extra is not None:
            body.update(health_extra(request))
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/languages")
    async def languages():
        return {
            "languages": list(LANGUAGES),
            "default": "Auto",
            "note": "Names are case-insensitive; 'Auto' detects the language from the text.",
        }

    @router.post("/submit-job")
    async def submit_job(request: Request):
        caller = owner(request)
        try:
            body = await _body(request)
            job_id = await run_in_threadpool(jobs().submit, caller, body)
        except CompatError as e:
            return detail(e.message, e.status)
        return {"job_id": job_id, "status": "queued"}

    def _job_id(request: Request, body: dict[str, Any] | None = None) -> str:
        job_id = (body or {}).get("job_id") or request.query_params.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise CompatError("'job_id' is required")
        return job_id

    @router.get("/job-status")
    async def job_status(request: Request):
        caller = owner(request)
        try:
            return await run_in_threadpool(jobs().status, caller, _job_id(request))
        except CompatError as e:
            return detail(e.message, e.status)

    @router.get("/job-result")
    async def job_result(request: Request):
        caller = owner(request)
        try:
            return _wav(await run_in_threadpool(jobs().result, caller, _job_id(request)))
        except CompatError as e:
            return detail(e.message, e.status)

    @router.post("/job-cancel")
    async def job_cancel(request: Request):
        caller = owner(request)
        try:
            body = await _body(request)
            return await run_in_threadpool(jobs().cancel, caller, _job_id(request, body))
        except CompatError as e:
            return detail(e.message, e.status)

    return router


def _server_health(request: Request) -> dict[str, Any]:
    state = _server_state(request)
    if state is None:
        return {}
    return {
        "models": [m.describe() for m in state.registry.models.values()],
        "queue": {"active": state.pool.active, "waiting": state.pool.waiting},
    }


def mount(
    app: FastAPI,
    service: CompatService | Provider,
    runner: JobRunner | Provider | None = None,
    owner: Callable[[Request], str] = default_owner,
) -> FastAPI:
    """Add utter's routes to `app` (normally `utter_tts.server.create_app(...)`); utter's /health replaces
    the app's own, with the server's model and queue fields added to utter's."""
    app.router.routes[:] = [
        r for r in app.router.routes if not (getattr(r, "path", None) == "/health" and "GET" in r.methods)
    ]
    app.include_router(build_router(service, runner, owner, health_extra=_server_health))
    return app
