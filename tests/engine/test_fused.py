"""The fused frame step (engine/fused.py, Triton kernels; on the CPU through Triton's interpreter) equals
the eager FrameBatch.step it stands in for: same codes, same caches, same state, frame after frame."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton")

from utter_tts.api import TTS  # noqa: E402
from utter_tts.engine.engine import Engine  # noqa: E402
from utter_tts.engine.fused import FusedFrame  # noqa: E402
from utter_tts.model.frame import FrameBatch  # noqa: E402
from utter_tts.request import Request  # noqa: E402

from ..model.test_parity import TEXTS  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(checkpoints):
    return TTS.from_pretrained(
        checkpoints("custom_voice", "tiny-1.7b"), device="cpu", dtype="float32"
    ).pipeline


def _batch(pipeline, jobs, slots, fused: bool):
    """A FrameBatch with the jobs in slots 0.. (fused: prefilled in one packed pass) and its stepper."""
    batch = FrameBatch(pipeline.talker, pipeline.eos_id, slots, max_len=80, max_text=48)
    if not fused:
        for i, job in enumerate(jobs):
            batch.prefill(i, job.prompt, job.sampling, job.request.seed)
        return batch, batch.step
    stepper = FusedFrame(batch)
    stepper.prefill(0, [j.prompt for j in jobs], [j.sampling for j in jobs], [j.request.seed for j in jobs])
    return batch, stepper.step


def test_fused_prefill_and_step_equal_the_eager_ones(pipeline):
    """Two streams of different prompt lengths prefilled in one packed pass, a padding slot, two frames
    (seeded sampling: the noise must match too): codes, next tokens, caches and state equal the eager
    prefill's and step's."""
    jobs = [
        pipeline.prepare(Request(TEXTS["english"], "speak", speaker="ryan", seed=3)),
        pipeline.prepare(Request(TEXTS["german"], "speak", "german", speaker="vivian", seed=4,
                                 sampling=dict(temperature=0.7, top_k=20, repetition_penalty=1.3))),
    ]  # fmt: skip
    (eager, eager_step), (fused_batch, fused_step) = (
        _batch(pipeline, jobs, 3, False),
        _batch(pipeline, jobs, 3, True),
    )
    assert torch.equal(eager.code0[:2], fused_batch.code0[:2])
    for _ in range(2):
        eager_step(3)
        fused_step(3)
        assert torch.equal(eager.out[:2], fused_batch.out[:2])
    for a, b in zip(
        eager.talker_caches + eager.predictor_caches, fused_batch.talker_caches + fused_batch.predictor_caches
    ):
        torch.testing.assert_close(a.k[:2], b.k[:2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.v[:2], b.v[:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eager.hidden[:2], fused_batch.hidden[:2], rtol=1e-4, atol=1e-4)
    for name in ("code0", "col", "frame", "seen", "text_len"):
        assert torch.equal(getattr(eager, name)[:2], getattr(fused_batch, name)[:2]), name


def test_engine_on_fused_kernels_equals_the_plain_model(pipeline):
    """The engine with kernels on (no graphs on the CPU) gives the plain model's codes."""
    req = Request(TEXTS["french"], "speak", "french", speaker="eric", seed=9,
                  sampling=dict(max_new_tokens=3, min_new_tokens=3))  # fmt: skip
    plain = pipeline.generate_codes([pipeline.prepare(req)])[0]
    engine = Engine(pipeline, max_streams=2, max_frames=8, max_prompt=64, max_text_tokens=48, kernels=True)
    try:
        assert engine.runner.fused is not None
        got = engine.generate_codes([req])[0]
    finally:
        engine.close()
    assert got.shape == (2, 16) and torch.equal(got, plain)
