"""utter's backend methods on tiny real checkpoints: valid WAV from each, utter's messages verbatim,
languages, max_new_tokens per sentence chunk, long text split, and the clone-prompt LRU."""

from __future__ import annotations

import base64

import pytest

from utter_tts.compat import LANGUAGES, CompatError, normalize_language
from utter_tts.compat.checks import CloneArgs, Limits
from utter_tts.compat.service import CompatService
from utter_tts.service.inline_voices import InlineVoices, reference_key

from .conftest import FRAMES, make_wav, read_wav

SUPPORTED = "Auto, Chinese, English, Japanese, Korean, German, French, Russian, Portuguese, Spanish, Italian"


class Counting:
    """Wraps a real TTS and counts create_voice / synthesize calls (the model still does the work)."""

    def __init__(self, tts):
        self.tts = tts
        self.create_voice_calls = 0
        self.requests: list = []

    def __getattr__(self, name):
        return getattr(self.tts, name)

    def create_voice(self, *a, **kw):
        self.create_voice_calls += 1
        return self.tts.create_voice(*a, **kw)

    def synthesize(self, reqs):
        self.requests.extend(reqs)
        return self.tts.synthesize(reqs)


@pytest.fixture
def counted(models, loopback_policy):
    base = Counting(models["base"])
    svc = CompatService(
        base=base,
        design_model=models["voice_design"],
        limits=Limits(batch_pieces=4, chunk_chars=60, design_max_new_tokens=FRAMES),
        fetch_policy=loopback_policy,
        cache=InlineVoices(2),
    )
    return svc, base


def test_languages_case_insensitive():
    assert LANGUAGES[0] == "Auto" and len(LANGUAGES) == 11
    assert normalize_language("english") == normalize_language("ENGLISH") == "english"
    assert normalize_language("Auto") == normalize_language("auto") == "auto"
    assert normalize_language("Klingon") is None and normalize_language(None) is None


def test_generate_voice_clone_base64_and_url(service, ref_wav, audio_server):
    b64 = base64.b64encode(ref_wav).decode()
    sr, n = read_wav(service.generate_voice_clone("Hello there.", "english", b64, "Some words.", FRAMES))
    assert sr == 24000 and n > 0
    wav = service.generate_voice_clone(
        "Hello there.", "FRENCH", f"{audio_server.url}/ref.wav", "Words.", FRAMES
    )
    assert read_wav(wav)[1] > 0
    data_url = "data:audio/wav;base64," + b64
    assert read_wav(service.generate_voice_clone("Hi.", "Auto", data_url, "Words.", FRAMES))[1] > 0


def test_generate_voice_clone_batch(service, ref_wav):
    b64 = base64.b64encode(ref_wav).decode()
    wavs = service.generate_voice_clone_batch(["One.", "Two."], ["English", "german"], b64, "Words.", FRAMES)
    assert len(wavs) == 2 and all(read_wav(w)[1] > 0 for w in wavs)


def test_design_methods(service):
    assert read_wav(service.generate_voice_design("Hello.", "English", "A calm, low voice."))[1] > 0
    assert (
        read_wav(service.design("Hello.", "A cheerful young voice."))[1] > 0
    )  # language defaults to English


def test_clone_method_with_and_without_ref_text(service, ref_wav):
    assert read_wav(service.clone("Hello.", ref_wav))[1] > 0  # x-vector mode, English default
    assert read_wav(service.clone("Hello.", ref_wav, "auto", ref_text="Some words."))[1] > 0


def test_get_model_info(service):
    info = service.get_model_info()
    assert info["languages"] == LANGUAGES
    assert info["attention_implementation"].startswith("sdpa")
    assert info["loaded"] == {"clone": True, "design": True}
    assert info["limits"]["max_design_text_chars"] == 500 and info["limits"]["max_job_text_chars"] == 50_000
    assert {"model", "gpu", "sample_rate", "prompt_cache"} <= set(info)


def test_model_info_names_the_fused_kernels_when_the_engine_runs_them(models):
    """With the fused frame step (a CUDA engine; built here on the CPU, where it would run interpreted),
    the reported attention is ours, not SDPA's."""
    pytest.importorskip("triton")
    from utter_tts.api import TTS
    from utter_tts.compat.model_info import attention_implementation
    from utter_tts.engine.engine import Engine

    pipeline = models["base"].pipeline
    assert attention_implementation(models["base"]).startswith("sdpa")
    plain = Engine(pipeline, max_streams=1, max_frames=8, max_prompt=64, max_text_tokens=64, kernels=False)
    fused = Engine(pipeline, max_streams=1, max_frames=8, max_prompt=64, max_text_tokens=64, kernels=True)
    try:
        assert attention_implementation(TTS(pipeline, plain)).startswith("sdpa")
        assert attention_implementation(TTS(pipeline, fused)).startswith("triton (fused decode attention")
    finally:
        plain.close()
        fused.close()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, a: s.generate_voice_clone("", "English", a, "w"), "'text' is required"),
        (lambda s, a: s.generate_voice_clone("Hi.", "English", a, ""), "'ref_text' is required"),
        (
            lambda s, a: s.generate_voice_clone("Hi.", "English", "", "w"),
            "Either 'ref_audio_url' or 'ref_audio_base64' is required",
        ),  # noqa: E501
        (
            lambda s, a: s.generate_voice_clone("Hi.", "Elvish", a, "w"),
            f"Unsupported language: Elvish. Supported: {SUPPORTED}",
        ),
        (lambda s, a: s.generate_voice_clone_batch([], [], a, "w"), "'texts' is required"),
        (
            lambda s, a: s.generate_voice_clone_batch(["a", "b"], ["English"], a, "w"),
            "Length of 'texts' must match 'languages'",
        ),  # noqa: E501
        (
            lambda s, a: s.generate_voice_design("Hi.", "English", ""),
            "'instruct' is required (voice description)",
        ),
        (
            lambda s, a: s.generate_voice_design("x" * 501, "English", "calm"),
            "'text' exceeds maximum length of 500 characters",
        ),  # noqa: E501
        (
            lambda s, a: s.generate_voice_design("Hi.", "English", "y" * 501),
            "'instruct' exceeds maximum length of 500 characters",
        ),  # noqa: E501
        (
            lambda s, a: s.design("Hi.", "calm", "Elvish"),
            f"Unsupported language: Elvish. Supported: {SUPPORTED}",
        ),
    ],
)
def test_method_errors_verbatim(service, ref_wav, call, message):
    with pytest.raises(CompatError) as e:
        call(service, base64.b64encode(ref_wav).decode())
    assert e.value.message == message and e.value.status == 400


def test_max_new_tokens_is_per_sentence_chunk(counted, ref_wav):
    svc, base = counted
    text = "The first sentence is here. The second one follows it now. And a third closes the text."
    wav = svc.clone_wav("me", CloneArgs(text, "english", None, 5), ref_wav)
    pieces = base.requests
    assert len(pieces) >= 2  # split at sentences (chunk_chars=60), each with its own cap
    assert all(r.sampling["max_new_tokens"] == 5 for r in pieces)
    # each chunk holds at most 5 frames (1920 samples each), joined by 0.12 s pauses
    frames = read_wav(wav)[1]
    assert 0 < frames <= len(pieces) * 5 * 1920 + (len(pieces) - 1) * int(0.12 * 24000)


def test_long_text_split_into_chunks(counted, ref_wav):
    svc, base = counted
    text = " ".join(f"Sentence number {i} is short." for i in range(12))
    read_wav(svc.clone_wav("me", CloneArgs(text, "auto", None, 2), ref_wav))
    assert len(base.requests) >= 5 and all(len(r.text) <= 60 for r in base.requests)


def test_prompt_cache_hit_skips_encoding(counted, ref_wav):
    svc, base = counted
    b64 = base64.b64encode(ref_wav).decode()
    svc.generate_voice_clone("One.", "English", b64, "Words.", FRAMES, caller="alice")
    svc.generate_voice_clone("Two.", "English", b64, "Words.", FRAMES, caller="alice")
    assert base.create_voice_calls == 1 and svc.cache.hits == 1
    # another caller, another transcript, or other audio: a new prompt each
    svc.generate_voice_clone("Three.", "English", b64, "Words.", FRAMES, caller="bob")
    svc.generate_voice_clone("Four.", "English", b64, "Other words.", FRAMES, caller="alice")
    assert base.create_voice_calls == 3
    # bounded: size 2, so the oldest (alice, Words.) was evicted
    assert len(svc.cache) == 2
    svc.generate_voice_clone("Five.", "English", b64, "Words.", FRAMES, caller="alice")
    assert base.create_voice_calls == 4


def test_reference_key_separates_audio_and_text():
    a = reference_key("c", "base", b"abc", "d")
    assert a != reference_key("c", "base", b"ab", "cd") and a != reference_key("x", "base", b"abc", "d")
    assert a != reference_key("c", "base2", b"abc", "d")  # another model, another voice
    assert a == reference_key("c", "base", b"abc", "d")


def test_bad_reference_audio_is_a_400(service):
    with pytest.raises(CompatError, match="base64"):
        service.generate_voice_clone("Hi.", "English", "not base64!!", "w")
    with pytest.raises(CompatError) as e:
        service.generate_voice_clone("Hi.", "English", base64.b64encode(b"RIFFjunk").decode(), "w")
    assert e.value.status == 400
    with pytest.raises(CompatError, match="loopback"):  # the service's policy allows 127.0.0.1 only
        service.generate_voice_clone("Hi.", "English", "http://127.0.0.2/ref.wav", "w")
    short = make_wav(seconds=0.3)
    with pytest.raises(CompatError):
        service.clone("Hi.", short)


@pytest.mark.parametrize("value,expected", [("bf16", "bf16"), ("int8", "int8"), (" FP8 ", "fp8")])
def test_deploy_weights_setting(value, expected):
    """UTTER_QWEN_ENGINE_WEIGHTS picks the engine's GEMM weights (bf16 by default)."""
    from utter_tts.compat.deploy import DeploySettings

    assert DeploySettings.from_env({}).engine_weights == "bf16"
    assert DeploySettings.from_env({"UTTER_QWEN_ENGINE_WEIGHTS": value}).engine_weights == expected


@pytest.mark.parametrize("value", ["int4", "", "bfloat16"])
def test_deploy_weights_setting_refuses_what_it_does_not_know(value):
    from utter_tts.compat.deploy import DeploySettings

    with pytest.raises(ValueError, match="UTTER_QWEN_ENGINE_WEIGHTS"):
        DeploySettings.from_env({"UTTER_QWEN_ENGINE_WEIGHTS": value})


def test_a_container_that_cannot_run_8bit_weights_stops_at_start(ckpts):
    """8-bit weights need the fused kernels: on this CPU the container's load stops with the engine's
    reason, naming the setting's field, instead of serving on something else."""
    from utter_tts.compat.deploy import DeploySettings, load_service
    from utter_tts.errors import InvalidInput

    settings = DeploySettings(base_model=str(ckpts["base"]), design_model=str(ckpts["voice_design"]),
                              device="cpu", dtype="float32", engine_streams=2, engine_frames=16,
                              engine_weights="int8")  # fmt: skip
    with pytest.raises(InvalidInput, match="weights") as err:
        load_service(settings, load_design=False)
    assert err.value.param == "weights"
