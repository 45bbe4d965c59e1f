"""The one-pass SnakeBeta kernel against the eager op, and the codec module's choice of it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from utter_tts.codec.decoder import SnakeBeta, fused_snake  # noqa: E402
from utter_tts.kernels.residual import bias_residual  # noqa: E402
from utter_tts.kernels.snake import BLOCK_C, BLOCK_T, snake, snake_factors, snake_ref  # noqa: E402

from .util import close, codec_row_shapes, must_fail  # noqa: E402


def params(C, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(C, generator=g) * 0.5, torch.randn(C, generator=g) * 0.5


@settings(max_examples=10, deadline=None)
@given(
    **codec_row_shapes(BLOCK_T, BLOCK_C),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.01, 1.0, 30.0]),  # sin wraps many periods at 30
    channels_last=st.booleans(),
)
def test_snake_equals_the_eager_op(B, C, T, seed, scale, channels_last):
    la, lb = params(C, seed)
    x = torch.randn(B, C, T, generator=torch.Generator().manual_seed(seed + 1)) * scale
    if channels_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    y = snake(x, *snake_factors(la, lb))
    assert y.shape == x.shape and y.stride() == x.stride()  # a new tensor in x's layout
    close(y, snake_ref(x, la, lb), torch.float32, scale=scale)


def test_snake_reads_strided_input():
    """The transposed convolution hands a time slice of a longer tensor: strides of a view."""
    la, lb = params(5, 1)
    full = torch.randn(2, 5, 300)
    x = full[..., 17:217]
    assert not x.is_contiguous()
    close(snake(x, *snake_factors(la, lb)), snake_ref(x, la, lb), torch.float32)


def test_faults_are_caught():
    la, lb = params(4, 2)
    x = torch.randn(2, 4, 50)
    y = snake(x, *snake_factors(la, lb))
    close(y, snake_ref(x, la, lb), torch.float32)
    must_fail(close, y, snake_ref(x, la.flip(0), lb.flip(0)), torch.float32)  # channels mixed up
    must_fail(close, y, snake_ref(x, lb, la), torch.float32)  # alpha and beta exchanged
    must_fail(close, y, x + torch.sin(x * la.exp()[None, :, None]) ** 2, torch.float32)  # beta ignored


def test_the_codec_uses_the_kernel_only_on_cuda(monkeypatch):
    assert fused_snake(torch.device("cpu")) is None  # CPU: the eager op
    fused_snake.cache_clear()
    monkeypatch.setenv("UTTER_TTS_CODEC_KERNELS", "0")
    assert fused_snake(torch.device("cuda", 0)) is None  # switched off
    fused_snake.cache_clear()
    monkeypatch.delenv("UTTER_TTS_CODEC_KERNELS")
    assert fused_snake(torch.device("cuda", 0)) is snake
    fused_snake.cache_clear()


def test_module_factors_follow_a_weight_load():
    """SnakeBeta caches e^alpha and 1/(e^beta + eps) for the kernel: a load must refresh them."""
    m = SnakeBeta(3)
    a0, _ = m._factors()
    torch.testing.assert_close(a0, torch.ones(3))
    la, lb = params(3, 3)
    m.load_state_dict({"alpha": la, "beta": lb})
    a1, inv_b1 = m._factors()
    torch.testing.assert_close(a1, la.exp())
    torch.testing.assert_close(inv_b1, 1.0 / (lb.exp() + 1e-9))
    x = torch.randn(1, 3, 40)
    with torch.no_grad():
        close(snake(x, a1, inv_b1), m(x), torch.float32)  # module on CPU: the eager op


def test_snake_writes_into_a_strided_out():
    """Into the tail of a causal convolution's input buffer: only those columns change."""
    la, lb = params(5, 3)
    x = torch.randn(2, 5, 37, generator=torch.Generator().manual_seed(4))
    buf = torch.full((2, 5, 6 + 37), 7.0)
    got = snake(x, *snake_factors(la, lb), out=buf[..., 6:])
    assert got.data_ptr() == buf[..., 6:].data_ptr()
    close(buf[..., 6:], snake_ref(x, la, lb), torch.float32)
    assert torch.equal(buf[..., :6], torch.full((2, 5, 6), 7.0))  # the context columns untouched


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_codec_with_the_kernel_equals_the_eager_codec(checkpoints, monkeypatch, channels_last):
    """The codec with the kernels (Snake written straight into its convolutions' input buffers, adding the
    bias of the convolution before it; each residual unit's end as one bias + residual pass) decodes what
    the eager codec decodes, whole and streamed; also with its convolution stack channels last (the
    GPU's layout: every Snake of a streamed decode then reads and writes channels-last tensors; a whole
    decode runs channels first, `plain_convolutions`)."""
    import utter_tts.codec.decoder as decoder
    from utter_tts.codec.speech_tokenizer import SpeechTokenizer

    codec = SpeechTokenizer.from_dir(checkpoints("base", "tiny-1.7b") / "speech_tokenizer")
    codes = torch.randint(0, 2048, (6, 16), generator=torch.Generator().manual_seed(9))
    want = codec.decode(codes)
    calls, biased, layouts = [], [], []
    if channels_last:
        codec.decoder.use_channels_last()
        w = codec.decoder.decoder[1].block[2].conv1.conv.weight
        assert w.stride(1) == 1 and w.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)

    def kernel(x, a, inv_b, out=None, bias=None):
        calls.append(out is not None)
        biased.append(bias is not None)
        y = snake(x, a, inv_b, out=out, bias=bias)
        layouts.append(x.shape[1] > 1 and x.stride(1) == 1 and y.stride(1) == 1)
        return y

    residuals = []

    def residual(x, y, bias, out=None):
        residuals.append(out is y)
        return bias_residual(x, y, bias, out=out)

    monkeypatch.setattr(decoder, "fused_snake", lambda device: kernel)
    monkeypatch.setattr(decoder, "fused_residual", lambda device: residual)
    scale = want.abs().max()
    whole = codec.decode(codes)
    whole_layouts, layouts[:] = list(layouts), []
    state = codec.new_state(1)  # passes of the decoder itself, as the engine's codec slots run them
    streamed = torch.cat([codec.run(codes[None, :1], state), codec.run(codes[None, 1:], state)], dim=1)[0]
    # per pass, 17 of the 29 Snakes write into a convolution's input buffer (each block's, each unit's
    # first, the last); the 12 before 1x1 convolutions (no context to keep) make a new tensor
    assert calls and calls.count(True) * 12 == calls.count(False) * 17
    assert biased.count(True) == calls.count(False)  # those 12 also add the convolution's bias before
    assert residuals and all(residuals) and len(residuals) == calls.count(False)  # each unit's end, in place
    assert all(layouts) == channels_last and any(layouts) == channels_last  # one layout throughout
    assert whole_layouts and not any(whole_layouts)  # a whole decode: channels first, whatever the codec's
    stream = codec.stream_decoder()  # a StreamingDecoder's eager pushes too
    layouts[:] = []
    pushed = torch.cat([stream.push(codes[:2]), stream.push(codes[2:])])
    assert layouts and not any(layouts)
    torch.testing.assert_close(pushed, want, rtol=0, atol=3e-5 * scale)
    torch.testing.assert_close(whole, want, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(streamed, want, rtol=0, atol=3e-5 * scale)


def test_snake_adds_the_bias_first():
    la, lb = params(6, 5)
    g = torch.Generator().manual_seed(6)
    x, bias = torch.randn(3, 6, 70, generator=g), torch.randn(6, generator=g)
    y = snake(x, *snake_factors(la, lb), bias=bias)
    close(y, snake_ref(x + bias[None, :, None], la, lb), torch.float32)
    must_fail(close, y, snake_ref(x, la, lb), torch.float32)  # a bias ignored
    must_fail(close, y, snake_ref(x + bias.flip(0)[None, :, None], la, lb), torch.float32)  # channels mixed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_mixed_codec_keeps_its_residual_stream_in_fp32(checkpoints, monkeypatch, dtype):
    """The mixed codec (GPU: UTTER_TTS_CODEC_PRECISION=mixed-fp16 or mixed-bf16): the upsampling blocks'
    convolutions read and write `dtype`, the residual units' sums stay fp32, the states of those
    convolutions are `dtype`; its audio stays near the fp32 codec's, whole and streamed (random tiny
    weights: fp16 keeps 10 mantissa bits, bf16 7)."""
    import utter_tts.codec.decoder as decoder
    from utter_tts.codec.speech_tokenizer import SpeechTokenizer
    from utter_tts.kernels.residual import bias_residual

    codec = SpeechTokenizer.from_dir(checkpoints("base", "tiny-1.7b") / "speech_tokenizer")
    codes = torch.randint(0, 2048, (6, 16), generator=torch.Generator().manual_seed(9))
    want = codec.decode(codes)
    sums = []

    def residual(x, y, bias, out=None):
        sums.append((y.dtype, out.dtype))
        return bias_residual(x, y, bias, out=out)

    monkeypatch.setattr(decoder, "fused_snake", lambda device: snake)
    monkeypatch.setattr(decoder, "fused_residual", lambda device: residual)
    codec.decoder.use_channels_last()
    codec.decoder.use_mixed_precision(dtype)
    state = codec.new_state(1)
    assert state.blocks[0].units[0].conv1.inputs.dtype == dtype
    assert state.last_conv.inputs.dtype == torch.float32  # the last convolution stays fp32
    whole = codec.decode(codes)
    whole_sums, sums[:] = list(sums), []
    state = codec.new_state(1)  # passes of the decoder itself, as the engine's codec slots run them
    streamed = torch.cat([codec.run(codes[None, :2], state), codec.run(codes[None, 2:], state)], dim=1)[0]
    assert sums and set(sums) == {(dtype, torch.float32)}
    # a whole decode runs its convolutions in fp32 (`plain_convolutions`): only the weights were rounded
    assert whole_sums and set(whole_sums) == {(torch.float32, torch.float32)}
    rel = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]  # 0.29 % and 1.9 % on the full-size codec
    for got in (whole, streamed):
        err = float((got - want).norm() / want.norm())
        assert err < rel, err
    assert float((streamed - want).norm() / want.norm()) > 1e-6  # the convolutions did run in `dtype`
    assert float((whole - want).norm() / want.norm()) < float((streamed - want).norm() / want.norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_whole_decode_runs_channels_first_in_the_codecs_own_dtype(checkpoints, dtype):
    """`SpeechTokenizer.decode` undoes channels last and mixed precision for its pass
    (`plain_convolutions`: cuDNN's heuristic picks for channels-last fp16 were 10x slower on an H200): the
    audio of a codec never set so whose upsampling blocks hold the same rounded weights."""
    from utter_tts.codec.speech_tokenizer import SpeechTokenizer

    path = checkpoints("base", "tiny-1.7b") / "speech_tokenizer"
    codec, plain = SpeechTokenizer.from_dir(path), SpeechTokenizer.from_dir(path)
    codes = torch.randint(0, 2048, (7, 16), generator=torch.Generator().manual_seed(3))
    unrounded = plain.decode(codes)
    codec.decoder.use_channels_last()
    codec.decoder.use_mixed_precision(dtype)
    with torch.no_grad():  # the plain codec takes the rounded weights (and the fp16/bf16 transposed biases)
        for mine, theirs in zip(plain.decoder.decoder.parameters(), codec.decoder.decoder.parameters()):
            mine.copy_(theirs.float())
    want, got = plain.decode(codes), codec.decode(codes)
    scale = want.abs().max()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * scale)
    assert float((got - unrounded).abs().max()) > 1e-6 * scale  # the rounded weights were what ran
    assert codec.decoder.decoder[1].block[2].conv1.conv.weight.dtype == dtype  # the codec itself unchanged
    stream = codec.stream_decoder()  # a StreamingDecoder's pushes run plain too
    pushed = torch.cat([stream.push(codes[:3]), stream.push(codes[3:])])
    # (a streamed decode's float noise against one-shot is ~4e-6 of the peak; fp16 / bf16 passes 3e-3 / 3e-2)
    assert float((pushed - want).abs().max()) < 3e-5 * scale
    state = codec.new_state(1)  # the engine's passes (graphs on the GPU) still run in `dtype`
    passes = torch.cat([codec.run(codes[None, :3], state), codec.run(codes[None, 3:], state)], dim=1)[0]
    assert float((passes - want).abs().max()) > 3e-4 * scale


def test_a_codec_precision_that_does_not_exist_is_refused(monkeypatch):
    from utter_tts.codec.decoder import codec_mixed_dtype

    monkeypatch.setenv("UTTER_TTS_CODEC_PRECISION", "fp8")
    with pytest.raises(ValueError, match="UTTER_TTS_CODEC_PRECISION"):
        codec_mixed_dtype(torch.device("cpu"))
    monkeypatch.setenv("UTTER_TTS_CODEC_PRECISION", "mixed-fp16")
    assert codec_mixed_dtype(torch.device("cpu")) is None  # the CPU runs channels first, in fp32


def test_the_gpu_codec_is_mixed_fp16_unless_its_activations_could_overflow(checkpoints, monkeypatch, caplog):
    """Where the fused kernels run, a loaded codec is channels last with fp16 upsampling convolutions by
    default; a calibration decode whose peak, times FP16_HEADROOM, passes fp16's range keeps it fp32 (with
    a warning); decoded audio that is not finite is an error."""
    import utter_tts.codec.decoder as decoder
    from utter_tts.codec.speech_tokenizer import NonFiniteAudio, SpeechTokenizer

    folder = checkpoints("base", "tiny-1.7b") / "speech_tokenizer"
    monkeypatch.setattr(decoder, "fused_snake", lambda device: snake)  # as on a GPU
    monkeypatch.delenv("UTTER_TTS_CODEC_PRECISION", raising=False)
    codec = SpeechTokenizer.from_dir(folder)
    unit = codec.decoder.decoder[1].block[2]
    assert unit.conv1.channels_last and unit.conv1.conv.weight.dtype == torch.float16
    assert 0 < codec.decoder.conv_peak() * decoder.FP16_HEADROOM < 65504
    monkeypatch.setattr(decoder, "FP16_HEADROOM", 1e9)
    monkeypatch.setattr("utter_tts.codec.speech_tokenizer.FP16_HEADROOM", 1e9)
    with caplog.at_level("WARNING"):
        codec = SpeechTokenizer.from_dir(folder)
    assert codec.decoder.decoder[1].block[2].conv1.conv.weight.dtype == torch.float32
    assert "could overflow" in caplog.text
    with torch.no_grad():
        codec.decoder.decoder[-2].alpha.fill_(float("inf"))  # the last Snake: sin(inf) is NaN
    with pytest.raises(NonFiniteAudio):
        codec.decode(torch.zeros(2, 16, dtype=torch.long))
