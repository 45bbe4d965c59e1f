"""utter's HTTP routes as a FastAPI router: JSON in, `audio/wav` out, 4xx as `{"detail": ...}`.

Each answers as utter's original Modal app did (modal_app/qwen3_tts/app.py and app_voice_design.py at
f4a1c6a: same fields, messages, statuses and check order; tests/modal_app/test_utter_replay.py holds the
table). Mount it on the server app with `mount(app, service, runner)`: the generation routes then share
the server's API keys (callers are the key owners the server derives; `auth=False` serves them without
keys, every caller then being "anonymous") and its bounded generation pool, and utter's `/health`
replaces the server's (keeping the server's fields).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from utter_tts.compat.jobs import JobRunner, public_status
from utter_tts.compat.languages import LANGUAGES
from utter_tts.compat.service import CompatError, CompatService, model_name, size
from utter_tts.textcheck import printable
from utter_tts.voices.library import owner_for_key

log = logging.getLogger("utter_tts.compat")

Provider = Callable[[], Any]
RESULT_WAIT_S = 5.0  # the original's /job-result waited this long (`get(timeout=5)`) before its 202


def _get(x: Any) -> Any:
    return x() if callable(x) and not isinstance(x, (CompatService, JobRunner)) else x


def detail(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": printable(message)}, status_code=status)


def _server_state(request: Request):
    return getattr(request.app.state, "server", None)


def default_owner(request: Request) -> str:
    """The caller: the server's key owner (401 without a valid key when keys are on)."""
    state = _server_state(request)
    if state is None:
        return "anonymous"
    return state.keys.owner(request)


def keyless_owner(request: Request) -> str:
    """Every caller is the anonymous owner: utter's routes served without keys."""
    return owner_for_key(None)


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


def build_router(
    service: CompatService | Provider,
    runner: JobRunner | Provider | None = None,
    owner: Callable[[Request], str] = default_owner,
    health_extra: Callable[[Request], dict[str, Any]] | None = None,
    result_wait_s: float = RESULT_WAIT_S,
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
        return out if isinstance(out, Response) else _wav(out, "designed_voice.wav")

    @router.get("/health")
    async def health(request: Request):
        s = svc()
        info = s.get_model_info() if s is not None else {}
        state = _server_state(request)
        ready = s is not None and (state is None or state.registry.ready.is_set())
        body = {
            "status": "healthy" if ready else "loading",
            "model": model_name(info["model_id"]) if info else None,
            "gpu": info.get("gpu", "none"),
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
            "note": "Use 'Auto' for automatic language detection",
        }

    @router.post("/submit-job")
    async def submit_job(request: Request):
        caller = owner(request)
        try:
            body = await _body(request)
            job_id = await run_in_threadpool(jobs().submit, caller, body)
        except CompatError as e:
            return detail(e.message, e.status)
        return {"job_id": job_id, "status": "submitted", "text_length": size(body.get("text")) or 0}

    @router.get("/job-status")
    async def job_status(request: Request):
        caller = owner(request)
        job_id = _query_job_id(request)
        if isinstance(job_id, Response):
            return job_id
        try:
            state = await run_in_threadpool(jobs().state, caller, job_id)
        except CompatError as e:
            return detail(e.message, e.status)
        return public_status(job_id, state)

    @router.get("/job-result")
    async def job_result(request: Request):
        caller = owner(request)
        job_id = _query_job_id(request)
        if isinstance(job_id, Response):
            return job_id
        deadline = time.monotonic() + result_wait_s
        try:
            while True:
                wav = await run_in_threadpool(jobs().result, caller, job_id)
                if wav is not None:
                    return _wav(wav)
                if time.monotonic() >= deadline:
                    return detail("Job still processing", 202)
                await asyncio.sleep(min(0.1, result_wait_s))
        except CompatError as e:
            return detail(e.message, e.status)

    async def job_cancel(request: Request):
        caller = owner(request)
        try:
            body = await _body(request)
            job_id = body.get("job_id")
            if not job_id:
                raise CompatError("'job_id' is required")
            if not await run_in_threadpool(jobs().cancel, caller, job_id):
                raise CompatError("Failed to cancel: Job not found", status=404)
        except CompatError as e:
            return detail(e.message, e.status)
        return {"job_id": job_id, "status": "cancelled"}

    # The original's function was `cancel_job` (its URL ends in cancel-job); earlier versions of this
    # deployment documented /job-cancel: both answer.
    router.add_api_route("/cancel-job", job_cancel, methods=["POST"])
    router.add_api_route("/job-cancel", job_cancel, methods=["POST"])
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
    auth: bool = True,
    result_wait_s: float = RESULT_WAIT_S,
) -> FastAPI:
    """Add utter's routes to `app` (normally `utter_tts.server.create_app(...)`); utter's /health replaces
    the app's own, with the server's model and queue fields added to utter's. `auth=False` serves utter's
    routes without keys (the server's own routes keep theirs) and says so loudly in the log."""
    if not auth:
        log.warning(
            "UTTER'S ROUTES ARE OPEN: /clone, /clone-batch, /design and the job routes take no API key "
            "(compat auth off). Anyone who knows this URL can spend its GPU time; keep the URL private "
            "or put Modal proxy auth in front of it."
        )
    app.router.routes[:] = [
        r for r in app.router.routes if not (getattr(r, "path", None) == "/health" and "GET" in r.methods)
    ]
    owner = default_owner if auth else keyless_owner
    app.include_router(build_router(service, runner, owner, _server_health, result_wait_s))
    return app
