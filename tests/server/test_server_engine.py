"""`utter-tts serve --engine on`: concurrent requests share the continuous-batching engine."""

from __future__ import annotations

import threading

import httpx
import numpy as np

from tests.server.conftest import ALICE, FRAMES, decode_audio, free_port, start_server_process, wait_healthy


def test_concurrent_requests_through_the_engine(checkpoints, tmp_path):
    port = free_port()
    proc = start_server_process(
        [checkpoints["custom_voice"]],
        tmp_path / "data",
        port,
        "--engine",
        "on",
        "--engine-streams",
        "4",
        "--max-concurrency",
        "4",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        body = dict(model="tts-1", input="Hello there.", voice="vivian", response_format="wav", seed=5)
        results: dict[int, httpx.Response] = {}

        def ask(i: int) -> None:
            results[i] = httpx.post(
                f"{url}/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {ALICE}"}, timeout=120
            )

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        audios = []
        for r in results.values():
            assert r.status_code == 200, r.text
            audio, rate = decode_audio(r.content, "wav")
            assert rate == 24000 and 0 < len(audio) <= FRAMES * 1920
            audios.append(audio)
        for a in audios[1:]:  # same seed, batched together: the same audio
            np.testing.assert_allclose(a, audios[0], atol=1e-4)
    finally:
        proc.terminate()
        proc.wait(30)
