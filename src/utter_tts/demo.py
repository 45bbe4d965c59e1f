"""Random-weight Qwen3-TTS checkpoints in the official on-disk layout, written by our own model code.

For offline demos (`python -m utter_tts.demo OUT`), benchmarks (the real 1.7B shapes) and tests. The
weights are random, so the model speaks noise until its text-length cap: swap the folder for a real
checkpoint (`Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice`) to hear speech. The official package is not needed;
the test suite checks that the official classes load what this writes, key for key.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from utter_tts.files import write_atomic

# Official language ids of the 12 Hz models (codec vocabulary).
LANGUAGE_IDS = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}

# Preset speakers for custom_voice test checkpoints; one of them speaks a dialect, as in the real model.
DEMO_SPEAKERS = {"vivian": 3065, "ryan": 3061, "eric": 3067}
DEMO_SPEAKER_DIALECT = {"vivian": False, "ryan": False, "eric": "sichuan_dialect"}

SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<tts_pad>": 151671,
    "<tts_text_bos>": 151672,
    "<tts_text_eod>": 151673,
}
REGULAR_VOCAB = 151643

# Tiny shapes: talker width equal to the code predictor's (as in 0.6B: no projection) or twice it
# (as in 1.7B: small_to_mtp_projection in use).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny-0.6b": dict(
        hidden=64,
        inter=128,
        layers=2,
        heads=4,
        kv=2,
        head_dim=16,
        sections=[4, 2, 2],
        text_hidden=48,
        cp=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
        size="0b6",
    ),
    "tiny-1.7b": dict(
        hidden=64,
        inter=128,
        layers=2,
        heads=4,
        kv=2,
        head_dim=16,
        sections=[4, 2, 2],
        text_hidden=64,
        cp=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        ),
        size="1b7",
    ),
    "1.7b": dict(
        hidden=2048,
        inter=6144,
        layers=28,
        heads=16,
        kv=8,
        head_dim=128,
        sections=[24, 20, 20],
        text_hidden=2048,
        cp=dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=5,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        ),
        size="1b7",
    ),
    "0.6b": dict(
        hidden=1024,
        inter=3072,
        layers=28,
        heads=16,
        kv=8,
        head_dim=128,
        sections=[24, 20, 20],
        text_hidden=2048,
        cp=dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=5,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        ),
        size="0b6",
    ),
}

GENERATION_CONFIG = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_p": 1.0,
    "subtalker_top_k": 50,
    "max_new_tokens": 8192,
}

PREPROCESSOR_CONFIG = {
    "chunk_length_s": None,
    "feature_extractor_type": "EncodecFeatureExtractor",
    "feature_size": 1,
    "overlap": None,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": 24000,
}


# A small multilingual corpus for the stand-in BPE: the template words must become single tokens
# ("assistant", "user", "\n") because the prompt builder slices the template by token position.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. Hello there, this is a test of speech synthesis.
She sells sea shells by the sea shore. How are you doing today? I am fine, thank you very much.
Der schnelle braune Fuchs springt über den faulen Hund. Guten Morgen, wie geht es dir heute?
Le vif renard brun saute par-dessus le chien paresseux. Bonjour, comment allez-vous aujourd'hui ?
El rápido zorro marrón salta sobre el perro perezoso. Buenos días, ¿cómo estás hoy?
Il veloce volpe marrone salta sopra il cane pigro. Buongiorno, come stai oggi?
A rápida raposa marrom pula sobre o cão preguiçoso. Bom dia, como você está hoje?
Быстрая коричневая лиса прыгает через ленивую собаку. Доброе утро, как дела?
今天天气很好，我们去公园散步吧。你好，欢迎使用语音合成系统。
今日はいい天気ですね。こんにちは、音声合成のテストです。
오늘 날씨가 정말 좋네요. 안녕하세요, 음성 합성 테스트입니다.
"""


def write_tokenizer(out_dir: str | Path) -> None:
    """Write a Qwen2-style byte-level BPE (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json)
    whose special tokens sit at the official ids; regular ids are padded to the real 151,643 with
    placeholders that no merge can produce."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from utter_tts.model.tokenizer import QWEN2_PRETOKENIZE_REGEX

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    template = "assistant\nhello\nuser\nhi\n"
    tok.train_from_iterator([_CORPUS] * 4 + [template] * 200, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for word in ("assistant", "user"):
        if word not in vocab:
            raise RuntimeError(f"stand-in tokenizer failed to learn {word!r} as one token")
    next_id = max(vocab.values()) + 1
    for i in range(next_id, REGULAR_VOCAB):
        vocab[f"<placeholder_{i}>"] = i
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")

    full = Tokenizer(models.BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt")))
    full.normalizer = tok.normalizer
    full.pre_tokenizer = tok.pre_tokenizer
    full.decoder = tok.decoder
    spec = json.loads(full.to_str())
    spec["added_tokens"] = [
        dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for s, i in SPECIAL_TOKENS.items()
    ]
    with open(out / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(i): dict(
                content=s, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True
            )
            for s, i in SPECIAL_TOKENS.items()
        },
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, indent=1)


def talker_config(shape: str, model_type: str) -> dict[str, Any]:
    s = SHAPES[shape]
    cp = dict(s["cp"])
    cp.update(
        vocab_size=2048,
        num_code_groups=16,
        max_position_embeddings=65536,
        rms_norm_eps=1e-6,
        rope_theta=1000000,
        hidden_act="silu",
        use_cache=True,
        attention_bias=False,
        use_sliding_window=False,
        max_window_layers=28,
        layer_types=None,
    )
    custom = model_type == "custom_voice"
    return dict(
        code_predictor_config=cp,
        hidden_size=s["hidden"],
        intermediate_size=s["inter"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        head_dim=s["head_dim"],
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling={
            "interleaved": True,
            "mrope_section": s["sections"],
            "rope_type": "default",
            "type": "default",
        },
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        attention_dropout=0.0,
        vocab_size=3072,
        text_vocab_size=151936,
        text_hidden_size=s["text_hidden"],
        num_code_groups=16,
        position_id_per_seconds=13,
        codec_bos_id=2149,
        codec_eos_token_id=2150,
        codec_pad_id=2148,
        codec_think_id=2154,
        codec_nothink_id=2155,
        codec_think_bos_id=2156,
        codec_think_eos_id=2157,
        codec_language_id=dict(LANGUAGE_IDS),
        spk_id=dict(DEMO_SPEAKERS) if custom else {},
        spk_is_dialect=dict(DEMO_SPEAKER_DIALECT) if custom else {},
    )


def speech_tokenizer_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        enc = dict(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            intermediate_size=128,
            num_filters=8,
            codebook_dim=32,
            vector_quantization_hidden_dimension=32,
        )
        dec = dict(
            latent_dim=64,
            codebook_dim=32,
            decoder_dim=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
        )
    else:
        enc = dict(
            hidden_size=512,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            head_dim=64,
            intermediate_size=2048,
            num_filters=64,
            codebook_dim=256,
            vector_quantization_hidden_dimension=256,
        )
        dec = dict(
            latent_dim=1024,
            codebook_dim=512,
            decoder_dim=1536,
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=16,
            head_dim=64,
        )
    enc.update(
        audio_channels=1,
        kernel_size=7,
        residual_kernel_size=3,
        last_kernel_size=3,
        num_residual_layers=1,
        compress=2,
        upsampling_ratios=[8, 6, 5, 4],
        hidden_act="gelu",
        norm_eps=1e-5,
        layer_scale_initial_scale=0.01,
        rope_theta=10000.0,
        max_position_embeddings=8000,
        sliding_window=250,
        num_quantizers=32,
        num_semantic_quantizers=1,
        codebook_size=2048,
        pad_mode="constant",
        use_causal_conv=True,
        sampling_rate=24000,
        frame_rate=12.5,
        use_conv_shortcut=False,
        upsample_groups=enc["hidden_size"],
        dilation_growth_rate=2,
        trim_right_ratio=1.0,
    )
    dec.update(
        codebook_size=2048,
        hidden_act="silu",
        layer_scale_initial_scale=0.01,
        rms_norm_eps=1e-5,
        rope_theta=10000,
        max_position_embeddings=8000,
        sliding_window=72,
        num_quantizers=16,
        num_semantic_quantizers=1,
        semantic_codebook_size=4096,
        upsample_rates=[8, 5, 4, 3],
        upsampling_ratios=[2, 2],
        vector_quantization_hidden_dimension=512,
        attention_bias=False,
        attention_dropout=0.0,
    )
    return dict(
        encoder_config=enc,
        decoder_config=dec,
        encoder_valid_num_quantizers=16,
        input_sample_rate=24000,
        output_sample_rate=24000,
        decode_upsample_rate=1920,
        encode_downsample_rate=1920,
    )


def speaker_encoder_config(shape: str) -> dict[str, Any]:
    hidden = SHAPES[shape]["hidden"]
    if shape.startswith("tiny"):
        return dict(
            enc_dim=hidden,
            sample_rate=24000,
            enc_channels=[32, 32, 32, 32, 96],
            enc_attention_channels=16,
            enc_se_channels=16,
        )
    return dict(enc_dim=hidden, sample_rate=24000)


def randomize_model(model, generator) -> None:
    """Re-draw a tiny model's weights so every part shapes the output.

    At the default init (std 0.02, zero biases) a tiny talker is almost a bag of embeddings: its layers,
    the text projection and the speaker encoder add next to nothing to the residual stream, so a test
    could not see a wrong text alignment or a wrong x-vector, and flat logits make greedy decoding
    repeat one code. Fan-in scaled weights make each layer contribute O(1); wider heads give logit
    margins well above float noise."""
    nn = torch.nn
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv1d)):
                mod.weight.normal_(0.0, 1.0 / math.sqrt(mod.weight[0].numel()), generator=generator)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(mod, nn.Embedding):
                mod.weight.normal_(0.0, 1.0, generator=generator)
        for name, p in model.named_parameters():
            if name.endswith(("codec_head.weight",)) or ".lm_head." in name:
                p.normal_(0.0, 0.5, generator=generator)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.8, 1.2, generator=generator)


def randomize_speech_tokenizer(st, generator) -> None:
    """Re-draw the codec's weights so a random checkpoint encodes to varied codes and decodes to audible,
    unclipped audio (tiny shapes: waveform RMS 0.1-0.2, under 1% of it at the +-1 clamp).

    At the default init the codebooks are zero, every layer scale is 0.01 and ConvNeXt gammas 1e-6: the
    encoder emits one code and the decoder a near-silent waveform (RMS ~4e-8), useless for parity.
    Here: fan-in scaled conv/linear weights, small random biases, Snake alpha/beta, layer scales and
    norms away from their identity values, codebooks N(0, 1) stored as EMA sums over random cluster
    usage (so the sum/usage division matters), damped residual branches and a quiet output conv."""
    nn = torch.nn
    with torch.no_grad():
        for mod in st.modules():
            if isinstance(mod, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
                w = mod.weight
                if isinstance(mod, nn.ConvTranspose1d):
                    fan_in = w.shape[0] * w.shape[2] / mod.stride[0]
                else:
                    fan_in = w[0].numel()
                w.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, 0.1, generator=generator)
        for name, p in st.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.normal_(0.0, 0.3, generator=generator)
            elif name.endswith(("layer_scale.scale", ".gamma")):
                p.uniform_(0.5, 1.0, generator=generator)
            elif name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2, generator=generator)
        tensors = dict(st.named_parameters())
        tensors.update(st.named_buffers())
        for name, t in tensors.items():
            if name.endswith(("embedding_sum", "embed_sum")):
                usage = tensors[name.rsplit(".", 1)[0] + ".cluster_usage"]
                usage.uniform_(0.5, 2.0, generator=generator)
                t.normal_(0.0, 1.0, generator=generator).mul_(usage[:, None])
        # decoder: each of the 12 residual units would otherwise grow the signal ~1.4x; the last conv
        # maps the final std (~2.5 on tiny shapes) to ~0.15
        dec = st.decoder
        for name, p in dec.named_parameters():
            if name.endswith("conv2.conv.weight"):
                p.mul_(0.25)
        dec.decoder[-1].conv.weight.mul_(0.05)
        dec.decoder[-1].conv.bias.zero_()


def checkpoint_config(shape: str, model_type: str, dtype: str = "float32") -> dict[str, Any]:
    """config.json of a checkpoint, as the hub writes it."""
    return dict(
        architectures=["Qwen3TTSForConditionalGeneration"],
        model_type="qwen3_tts",
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size=SHAPES[shape]["size"],
        tts_model_type=model_type,
        im_start_token_id=SPECIAL_TOKENS["<|im_start|>"],
        im_end_token_id=SPECIAL_TOKENS["<|im_end|>"],
        tts_pad_token_id=SPECIAL_TOKENS["<tts_pad>"],
        tts_bos_token_id=SPECIAL_TOKENS["<tts_text_bos>"],
        tts_eos_token_id=SPECIAL_TOKENS["<tts_text_eod>"],
        talker_config=talker_config(shape, model_type),
        speaker_encoder_config=speaker_encoder_config(shape),
        dtype=dtype,
    )


def write_side_files(out: Path, st_cfg: dict[str, Any]) -> None:
    """Everything of a checkpoint but its weights and config.json: tokenizer, generation and codec configs."""
    (out / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    codec_cfg = dict(
        st_cfg, architectures=["Qwen3TTSTokenizerV2Model"], model_type="qwen3_tts_tokenizer_12hz"
    )
    (out / "speech_tokenizer" / "config.json").write_text(json.dumps(codec_cfg, indent=1), "utf-8")
    (out / "speech_tokenizer" / "preprocessor_config.json").write_text(
        json.dumps(PREPROCESSOR_CONFIG, indent=1), "utf-8"
    )
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=1), "utf-8")
    write_tokenizer(out)


# Left in every folder build_checkpoint writes: the one kind of non-empty folder it may replace unasked.
MARKER = ".utter-tts-demo"
MARKER_TEXT = (
    "Written by `python -m utter_tts.demo`: a Qwen3-TTS checkpoint with random weights. The demo writer\n"
    "replaces this folder when asked to write here again; without this file it refuses to.\n"
)


def check_replaceable(out: Path, force: bool = False) -> None:
    """Raise FileExistsError unless `out` may be replaced: missing, an empty folder, a folder this writer
    made (it holds MARKER), or anything at all with `force`. Replacing used to delete whatever path it
    was given, a mistyped `.` included."""
    if force or not (out.exists() or out.is_symlink()):
        return
    hint, name = "pass --force (force=True) to replace it", out.absolute()  # `.` named in full
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{name} exists and is not a folder; {hint}")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(
            f"{name} is not empty and was not written by python -m utter_tts.demo (no {MARKER} in it); {hint}"
        )


def _remove(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()  # a link is replaced, never what it points to
    elif out.exists():
        shutil.rmtree(out)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {"format": "pt"})
    write_atomic(path, data)


def build_checkpoint(
    out_dir: str | Path,
    model_type: str = "base",
    shape: str = "tiny-1.7b",
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    force: bool = False,
) -> Path:
    """Write a random checkpoint of `model_type` (base / voice_design / custom_voice) and `shape` (see
    SHAPES) to `out_dir`. An existing `out_dir` is replaced only if it is empty or this function wrote it
    (see check_replaceable); `force` replaces anything there. The talker (and the speaker encoder of Base)
    in `dtype`, the codec in float32, as the hub's checkpoints are."""
    from utter_tts.codec.speech_tokenizer import SpeechTokenizer, SpeechTokenizerConfig
    from utter_tts.model.config import TTSConfig
    from utter_tts.model.speaker_encoder import SpeakerEncoder
    from utter_tts.model.talker import Talker

    if model_type not in ("base", "voice_design", "custom_voice"):
        raise ValueError(f"unknown model_type {model_type!r}; use base, voice_design or custom_voice")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    out = Path(out_dir)
    check_replaceable(out, force)
    _remove(out)
    out.mkdir(parents=True)
    # first, so a folder left half-written by a crash is still ours to replace
    (out / MARKER).write_text(MARKER_TEXT, "utf-8")
    gen = torch.Generator(device=device).manual_seed(seed)
    cfg = checkpoint_config(shape, model_type, dtype)
    tts_cfg = TTSConfig.from_dict(cfg)
    weights: dict[str, torch.Tensor] = {}
    with torch.device(device), torch.no_grad():
        talker = Talker(tts_cfg.talker)
        randomize_model(talker, gen)
        weights.update({f"talker.{k}": v.to(getattr(torch, dtype)) for k, v in talker.state_dict().items()})
        del talker
        if model_type == "base":
            spk = SpeakerEncoder(tts_cfg.speaker_encoder)
            randomize_model(spk, gen)
            weights.update(
                {f"speaker_encoder.{k}": v.to(getattr(torch, dtype)) for k, v in spk.state_dict().items()}
            )
    (out / "config.json").write_text(json.dumps(cfg, indent=1), "utf-8")
    _save(weights, out / "model.safetensors")
    del weights

    st_cfg = speech_tokenizer_config(shape.startswith("tiny"))
    with torch.device(device), torch.no_grad():
        codec = SpeechTokenizer(SpeechTokenizerConfig.from_dict(st_cfg))
        randomize_speech_tokenizer(codec, gen)
    write_side_files(out, st_cfg)
    _save(codec.state_dict(), out / "speech_tokenizer" / "model.safetensors")
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m utter_tts.demo",
        description="Write a checkpoint with RANDOM weights in the official Qwen3-TTS layout (offline demos, "
        "benchmarks). It loads like a real one, but speaks noise until its text-length cap.",
    )
    ap.add_argument(
        "out",
        help="folder to write; an existing one is replaced only if it is empty or this command wrote it "
        "(--force to replace anything)",
    )
    ap.add_argument(
        "--model-type",
        default="base",
        choices=["base", "voice_design", "custom_voice"],
        help="base: cloning; voice_design: voices from descriptions; custom_voice: preset speakers "
        f"({', '.join(DEMO_SPEAKERS)}) (default: base)",
    )
    ap.add_argument(
        "--shape",
        default="tiny-1.7b",
        choices=list(SHAPES),
        help="tiny-* for tests and demos (about 70 MiB, fast on a CPU); 1.7b / 0.6b: the real models' "
        "shapes, for benchmarks (default: tiny-1.7b)",
    )
    ap.add_argument("--seed", type=int, default=0, help="weights' random seed (default: 0)")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="talker weights"
    )
    ap.add_argument("--device", default="cpu", help="where to draw the weights (cuda is faster for 1.7b)")
    ap.add_argument("--force", action="store_true", help="replace OUT whatever it holds")
    args = ap.parse_args(argv)
    try:
        path = build_checkpoint(
            args.out, args.model_type, args.shape, args.seed, args.dtype, args.device, force=args.force
        )
    except FileExistsError as e:
        ap.error(str(e))
    print(f"{path}: random {args.shape} {args.model_type} checkpoint")


if __name__ == "__main__":
    main()
