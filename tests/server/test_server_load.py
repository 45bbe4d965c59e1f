"""Load: 32 concurrent streaming clients all get correct audio; clients that leave free their slots."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.server.conftest import ALICE, ServerThread, make_config
from utter_tts.server.app import create_app

BODY = {"model": "tts-1", "input": "Hello there.", "voice": "ryan", "response_format": "pcm", "seed": 7}
AUTH = {"Authorization": f"Bearer {ALICE}"}


@pytest.fixture(scope="module")
def busy_server(registry, tmp_path_factory):
    app = create_app(make_config(tmp_path_factory.mktemp("load"), max_concurrency=2, max_queue=40), registry)
    with ServerThread(app) as srv:
        yield srv


def test_32_concurrent_streaming_clients(busy_server):
    expected = httpx.post(busy_server.url + "/v1/audio/speech", json=BODY, headers=AUTH, timeout=120).content
    assert expected
    results: dict[int, bytes] = {}
    barrier = threading.Barrier(32)

    def client(i: int) -> None:
        barrier.wait()
        with httpx.stream(
            "POST",
            busy_server.url + "/v1/audio/speech",
            json={**BODY, "stream_format": "audio"},
            headers=AUTH,
            timeout=300,
        ) as r:
            assert r.status_code == 200
            results[i] = b"".join(r.iter_raw())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 32
    # seeded sampling: every client gets exactly the same samples as the lone request
    assert all(data == expected for data in results.values())
    # a slot is released on the event loop once its worker thread has ended, which may come a moment
    # after the client read its last byte
    pool, deadline = busy_server.state.pool, time.monotonic() + 5
    while (pool.active or pool.waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.active == 0 and pool.waiting == 0


def test_disconnecting_clients_free_their_slots(busy_server):
    pool = busy_server.state.pool
    pool.chunk_delay_s = 3.0  # each generation would hold its slot for seconds
    try:
        for _ in range(2):
            with httpx.stream(
                "POST", busy_server.url + "/v1/audio/speech", json=BODY, headers=AUTH, timeout=60
            ) as r:
                assert r.status_code == 200
                next(r.iter_raw())  # first audio arrived; now the client goes away
            left = time.monotonic()
        deadline = left + 2.0
        while pool.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.active == 0, "a slot is still held by a client that left"
    finally:
        pool.chunk_delay_s = 0.0
    r = httpx.post(busy_server.url + "/v1/audio/speech", json=BODY, headers=AUTH, timeout=60)
    assert r.status_code == 200


def test_graceful_shutdown_finishes_in_flight_streams(registry, tmp_path):
    app = create_app(make_config(tmp_path, chunk_delay_s=0.7), registry)
    srv = ServerThread(app).__enter__()
    try:
        reference = httpx.post(srv.url + "/v1/audio/speech", json=BODY, headers=AUTH, timeout=60).content
        with httpx.stream("POST", srv.url + "/v1/audio/speech", json=BODY, headers=AUTH, timeout=60) as r:
            assert r.status_code == 200
            stream = r.iter_raw()
            pieces = [next(stream)]
            srv.server.should_exit = True  # what SIGTERM does: stop accepting, let this one finish
            pieces += list(stream)
        assert len(pieces) > 1 and b"".join(pieces) == reference  # the rest arrived after shutdown began
    finally:
        srv.__exit__(None, None, None)
    assert not srv.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=2)


def test_a_client_that_leaves_before_its_whole_file_is_made_frees_its_slot(busy_server):
    """A WAV request is answered as one whole file, so nothing is sent before the end: the server still
    notices the client leaving and cancels its generation."""
    pool = busy_server.state.pool
    pool.chunk_delay_s = 3.0
    seen, stop = [], threading.Event()

    def watch() -> None:  # the slot held while the client waits (on a loaded machine it may start late)
        while not stop.is_set():
            seen.append(pool.active)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the file is being made
            httpx.post(
                busy_server.url + "/v1/audio/speech",
                json={**BODY, "response_format": "wav"},
                headers=AUTH,
                timeout=httpx.Timeout(60, read=2.0),
            )
        deadline = time.monotonic() + 2.0
        while max(seen, default=0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert max(seen) == 1, "the request never held a slot"
        deadline = time.monotonic() + 4.0
        while pool.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.active == 0, "a slot is still held by a client that left"
    finally:
        stop.set()
        pool.chunk_delay_s = 0.0
