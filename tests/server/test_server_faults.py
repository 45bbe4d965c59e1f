"""A sticky GPU fault (the CUDA context is poisoned) ends the process: 503 + Retry-After and /health 503
with the reason meanwhile, then exit status 1 after a short drain; an ordinary fault fails one request."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.server.conftest import ALICE, free_port, make_config
from utter_tts.server.app import create_app, serve
from utter_tts.server.registry import ModelRegistry

AUTH = {"Authorization": f"Bearer {ALICE}"}
SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": "pcm"}
STICKY = (
    "CUDA error: an illegal memory access was encountered\nCompile with `TORCH_USE_CUDA_DSA` to enable..."
)


class Failing:
    """A loaded model whose generations raise `error` (what a poisoned GPU does to every kernel)."""

    def __init__(self, tts, error: BaseException):
        self._tts, self._error = tts, error

    def __getattr__(self, name):
        return getattr(self._tts, name)

    def stream(self, *args, **kwargs):
        raise self._error


def _serving(registry, tmp_path, error: BaseException):
    failing = ModelRegistry()
    failing.add("custom_voice", Failing(registry.models["custom_voice"].tts, error), model_id="custom_voice")
    failing.ready.set()
    config = make_config(tmp_path, port=free_port(), fault_drain_s=1.0, shutdown_grace_s=1.0)
    app = create_app(config, failing)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(serve(app, config, "warning")), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return app, url, thread, result
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


@pytest.mark.parametrize("how", ["raised", "caused"])
def test_a_sticky_gpu_fault_refuses_work_reports_it_and_exits_non_zero(registry, tmp_path, how):
    error = RuntimeError(STICKY)
    if how == "caused":  # as the engine hands it on: wrapped, the CUDA error as its cause
        try:
            raise RuntimeError("generation failed") from error
        except RuntimeError as wrapped:
            error = wrapped
    _, url, thread, result = _serving(registry, tmp_path, error)
    r = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, headers=AUTH, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "device_fault"
    health = httpx.get(f"{url}/health", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "illegal memory access" in health.json()["error"]
    again = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, headers=AUTH, timeout=30)
    assert again.status_code == 503 and again.json()["error"]["code"] == "device_fault"
    thread.join(timeout=30)
    assert not thread.is_alive() and result == [1]


def test_an_ordinary_fault_fails_one_request_and_the_server_serves_on(registry, tmp_path):
    app, url, thread, result = _serving(registry, tmp_path, RuntimeError("a bug of ours"))
    for _ in range(2):
        r = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, headers=AUTH, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    time.sleep(1.5)  # longer than fault_drain_s: a sticky fault would have stopped it by now
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200 and thread.is_alive()
    app.state.server.request_stop()
    thread.join(timeout=30)
    assert result == [0]


def test_the_engine_ends_for_good_on_a_sticky_fault(registry, monkeypatch):
    """Running and waiting generations fail, later submits are refused, the owner is told once."""
    from utter_tts.engine.engine import Engine
    from utter_tts.engine.scheduler import EngineFault
    from utter_tts.request import Request

    engine = Engine(registry.models["custom_voice"].tts.pipeline, max_streams=1, max_frames=16, kernels=False)
    told = []
    engine.scheduler.on_fatal = told.append
    try:
        monkeypatch.setattr(
            engine.runner, "launch", lambda n, hold=None: (_ for _ in ()).throw(RuntimeError(STICKY))
        )
        running = engine.submit(Request("Hello there.", "speak", speaker="ryan", seed=1))
        waiting = engine.submit(Request("Hello again.", "speak", speaker="ryan", seed=2))
        with pytest.raises(RuntimeError, match="illegal memory access"):
            running.result(timeout=60)
        with pytest.raises(EngineFault, match="illegal memory access"):
            waiting.result(timeout=60)
        with pytest.raises(EngineFault, match="must restart"):
            engine.submit(Request("And again.", "speak", speaker="ryan", seed=3))
        assert len(told) == 1 and "illegal memory access" in told[0]
    finally:
        engine.close()


def test_only_the_poisoning_errors_are_sticky():
    from utter_tts.errors import sticky_device_error

    assert sticky_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert sticky_device_error(RuntimeError("CUDA error: unspecified launch failure"))
    assert sticky_device_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")) is None
    assert sticky_device_error(ValueError("bad input")) is None
