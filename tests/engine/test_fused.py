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


def _batch(pipeline, jobs, slots, fused: bool, predictor_pass: str = "layers", talker_pass: str = "layers"):
    """A FrameBatch with the jobs in slots 0.. (fused: prefilled in one packed pass) and its stepper."""
    batch = FrameBatch(pipeline.talker, pipeline.eos_id, slots, max_len=80, max_text=48)
    if not fused:
        for i, job in enumerate(jobs):
            batch.prefill(i, job.prompt, job.sampling, job.request.seed)
        return batch, batch.step
    stepper = FusedFrame(batch, predictor_pass=predictor_pass, talker_pass=talker_pass)
    stepper.prefill(0, [j.prompt for j in jobs], [j.sampling for j in jobs], [j.request.seed for j in jobs])
    return batch, stepper.step


@pytest.mark.parametrize(
    "predictor_pass,talker_pass,varlen_prefill",
    [("layers", "layers", False), ("one-launch", "one-launch", False), ("layers", "layers", True)],
)
def test_fused_prefill_and_step_equal_the_eager_ones(
    pipeline, predictor_pass, talker_pass, varlen_prefill, monkeypatch
):
    """Two streams of different prompt lengths prefilled in one packed pass, a padding slot, two frames
    (seeded sampling: the noise must match too): codes, next tokens, caches and state equal the eager
    prefill's and step's; the code predictor's and talker's passes as layers or in one launch each
    (the talker's 80-column caches: attention in three phases); the prefill's
    attention over the packed prompts as FlashAttention-2 runs it (its reference standing in on the CPU)."""
    if varlen_prefill:
        from utter_tts.engine import fused as fused_mod
        from utter_tts.kernels import packed_decoder
        from utter_tts.kernels.attention import flash_prefill_ref

        monkeypatch.setattr(fused_mod, "flash_prefill_usable", lambda *a: True)
        monkeypatch.setattr(packed_decoder, "flash_prefill", flash_prefill_ref)
    jobs = [
        pipeline.prepare(Request(TEXTS["english"], "speak", speaker="ryan", seed=3)),
        pipeline.prepare(Request(TEXTS["german"], "speak", "german", speaker="vivian", seed=4,
                                 sampling=dict(temperature=0.7, top_k=20, repetition_penalty=1.3))),
    ]  # fmt: skip
    (eager, eager_step), (fused_batch, fused_step) = (
        _batch(pipeline, jobs, 3, False),
        _batch(pipeline, jobs, 3, True, predictor_pass, talker_pass),
    )
    assert fused_step.__self__.prefill_attention == ("flash-attention-2" if varlen_prefill else "triton")
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


# ---- 8-bit weights (weights="int8" / "fp8") -------------------------------------------------------------


@pytest.fixture
def wide_tiles(monkeypatch):
    """One-row tiles 256 columns wide: the interpreter runs every program in Python, and the default's
    4-column tiles make a head GEMM 512 programs (a frame took a minute); the math is the same."""
    from utter_tts.kernels.linear import CONFIGS, LinearConfig

    for rows in (1, 2):
        monkeypatch.setitem(CONFIGS, rows, LinearConfig(1, 256, 128, 4, 1))


QUANTIZED = ("w_qkv", "w_o", "w_gate_up", "w_down")


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_fused_prefill_with_8bit_weights_is_close_to_the_eager_one(pipeline, weights, wide_tiles):
    """Every layer's four GEMM weights and the predictor's input projection are 8-bit (the heads and the
    eager modules keep theirs); a prefill's hidden states stay within the quantization's error of the
    eager model's, and differ from them (the 8-bit weights are the ones used)."""
    from utter_tts.kernels.linear import QUANT_DTYPES, QuantWeight

    job = pipeline.prepare(Request(TEXTS["english"], "speak", speaker="ryan", seed=3))
    eager, _ = _batch(pipeline, [job], 1, False)
    batch = FrameBatch(pipeline.talker, pipeline.eos_id, 1, max_len=80, max_text=48)
    fused = FusedFrame(batch, weights)
    for packed in (fused.talker, fused.predictor):
        for layer in packed.layers:
            for name in QUANTIZED:
                w = getattr(layer, name)
                assert isinstance(w, QuantWeight) and w.q.dtype == QUANT_DTYPES[weights], name
    assert fused.proj_w is None or isinstance(fused.proj_w, QuantWeight)
    assert all(isinstance(h, torch.Tensor) for h in fused.heads)
    assert pipeline.talker.model.layers[0].mlp.down_proj.weight.dtype == torch.float32  # eager: as loaded
    fused.prefill(0, [job.prompt], [job.sampling], [job.request.seed])
    ref, got = eager.hidden[:1].double(), batch.hidden[:1].double()
    err = ((got - ref).norm() / ref.norm()).item()
    assert 0 < err < {"int8": 2e-2, "fp8": 8e-2}[weights], err


def test_engine_with_int8_weights_runs(pipeline, wide_tiles, monkeypatch):
    """The engine on fused kernels with int8 weights (weights= flows Engine -> Runner -> FusedFrame): a
    frame comes out, every code in the codebook's range."""
    from utter_tts.engine import scheduler

    monkeypatch.setattr(scheduler, "AHEAD", 0)  # no frames queued past the generation's one (interpreted)
    req = Request(TEXTS["french"], "speak", "french", speaker="eric", seed=9,
                  sampling=dict(max_new_tokens=2, min_new_tokens=2))  # fmt: skip
    engine = Engine(pipeline, max_streams=1, max_frames=8, max_prompt=64, max_text_tokens=48, kernels=True,
                    weights="int8")  # fmt: skip
    try:
        assert engine.runner.fused.weights == "int8"
        assert engine.runner.fused.talker.layers[0].w_down.q.dtype == torch.int8
        got = engine.generate_codes([req])[0]
    finally:
        engine.close()
    size = pipeline.talker.cfg.code_predictor.vocab_size
    assert got.shape == (1, 16) and got.dtype == torch.long
    assert ((got >= 0) & (got < size)).all()


def test_weight_modes_that_cannot_run_are_refused(pipeline, monkeypatch):
    from utter_tts.engine.runner import check_weights
    from utter_tts.errors import InvalidInput

    with pytest.raises(InvalidInput, match="weights must be one of bf16, int8, fp8, not 'int4'") as e:
        Engine(pipeline, max_streams=1, max_frames=8, max_prompt=64, weights="int4")
    assert e.value.param == "weights"
    with pytest.raises(InvalidInput, match="needs the fused kernels") as e:
        Engine(pipeline, max_streams=1, max_frames=8, max_prompt=64, kernels=False, weights="int8")
    assert e.value.param == "weights"
    # fp8: Ada / Hopper only (Triton has no e4m3 conversions on sm_80 / sm_86, e.g. the A10G)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    with pytest.raises(InvalidInput, match="sm_86: use weights='int8'") as e:
        check_weights("fp8", torch.device("cuda"), True)
    assert e.value.param == "weights"
    check_weights("int8", torch.device("cuda"), True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_weights("fp8", torch.device("cuda"), True)
    check_weights("fp8", torch.device("cpu"), True)  # the interpreter converts fp8


@pytest.mark.parametrize("variable", ["UTTER_TTS_PREDICTOR_PASS", "UTTER_TTS_TALKER_PASS"])
def test_pass_settings(monkeypatch, variable):
    """UTTER_TTS_PREDICTOR_PASS / UTTER_TTS_TALKER_PASS pick the code predictor's / talker's launches;
    layers by default; a wrong value is refused naming the variable."""
    from utter_tts.engine.fused import predictor_pass_setting, talker_pass_setting

    setting = {
        "UTTER_TTS_PREDICTOR_PASS": predictor_pass_setting,
        "UTTER_TTS_TALKER_PASS": talker_pass_setting,
    }
    monkeypatch.delenv(variable, raising=False)
    assert setting[variable]() == "layers"
    monkeypatch.setenv(variable, "one-launch")
    assert setting[variable]() == "one-launch"
    monkeypatch.setenv(variable, "megakernel")
    with pytest.raises(ValueError, match=variable):
        setting[variable]()


def test_one_gpu_has_one_one_launch_owner():
    """Two engines' grid-synced launches at once could each wait for programs the other holds: a GPU's
    first FusedFrame to ask keeps them, a second live one is refused (and runs its passes as layers), and
    once the first is gone the next may take them."""
    import gc

    from utter_tts.engine.fused import claim_one_launch

    class Frame:
        pass

    first, second = Frame(), Frame()
    assert claim_one_launch(97, first)
    assert claim_one_launch(97, first)  # asking again keeps it
    assert not claim_one_launch(97, second)
    assert claim_one_launch(96, second)  # another GPU
    del first
    gc.collect()
    assert claim_one_launch(97, second)
