"""The `utter-tts` command: clone, design, speak, make voices, serve; long texts are split into chunks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from utter_tts.errors import CheckpointError, InvalidInput, UtterTTSError
from utter_tts.files import check_writable, write_atomic
from utter_tts.text import split_sentences

DEFAULT_CHUNK_CHARS = 400
DEFAULT_PAUSE_S = 0.15  # silence between chunks (sentence pause; utter_tts.audio.join fades the seams)
MAX_CHUNK_CHARS = 5000  # utter_tts.request.MAX_TEXT_CHARS (not imported here: it pulls in torch)

# --out extension -> utter_tts.audio.encode format
OUTPUT_FORMATS = {
    ".wav": "wav",
    ".flac": "flac",
    ".mp3": "mp3",
    ".ogg": "opus",
    ".opus": "opus",
    ".aac": "aac",
}

# ---------------------------------------------------------------- audio out


def _output_format(out: str) -> str:
    ext = Path(out).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise InvalidInput(
            f"cannot tell the audio format from {out!r}; end --out with one of {', '.join(OUTPUT_FORMATS)}",
            param="out",
            code="unsupported_format",
        )
    return OUTPUT_FORMATS[ext]


def _check_out(path: str | os.PathLike) -> Path:
    """--out can be written: checked before any work, so a long synthesis is never lost at the end."""
    try:
        return check_writable(path)
    except OSError as e:
        raise InvalidInput(f"cannot write {str(path)!r}: {e.strerror or e}", param="out") from e


def write_audio(path: str | os.PathLike, audio, sample_rate: int) -> None:
    """Write mono float audio; the format follows the extension (.wav 16-bit PCM, .flac, .mp3, .ogg/.opus,
    .aac)."""
    from utter_tts.audio.encode import encode

    data = encode(audio, sample_rate, _output_format(str(path)))
    try:
        write_atomic(path, data)
    except OSError as e:
        raise InvalidInput(f"cannot write {str(path)!r}: {e.strerror or e}", param="out") from e


# ---------------------------------------------------------------- inputs


def _read_text(args: argparse.Namespace) -> str:
    if args.text_file is not None:
        if args.text_file == "-":
            return sys.stdin.read()
        path = Path(args.text_file)
        if not path.is_file():
            raise InvalidInput(f"text file not found: {args.text_file!r}", param="text_file")
        try:
            return path.read_text(encoding="utf-8-sig")  # a BOM is not text to speak
        except UnicodeDecodeError as e:
            raise InvalidInput(
                f"text file {args.text_file!r} is not UTF-8 text ({e.reason})", param="text_file"
            ) from e
    return sys.stdin.read() if args.text == "-" else args.text


def _load_voice(path: str):
    from utter_tts.voices.voice import Voice

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"voice file not found: {path!r}", param="voice")
    return Voice.load(p)


def _open_model(args: argparse.Namespace):
    """Device, dtype and the checkpoint's config and tokenizer: what every check needs, without the
    weights (a hub id fetches only its small files here)."""
    from utter_tts.device import resolve_device
    from utter_tts.model.checkpoint import open_checkpoint, parse_dtype

    device = resolve_device(args.device)
    dtype = parse_dtype(None if args.dtype == "auto" else args.dtype, device)
    return open_checkpoint(args.model, weights=False), device, dtype


def _load_model(ckpt, device, dtype):
    from utter_tts.api import TTS
    from utter_tts.pipeline import Pipeline

    return TTS(Pipeline.load(ckpt, device, dtype))


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    s = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_new_tokens,
    }
    if args.greedy:
        s.update(do_sample=False, subtalker_dosample=False)
    return {k: v for k, v in s.items() if v is not None}


def _reference(args: argparse.Namespace):
    """--ref decoded and checked (readable, not silent, 1-30 s), as (samples, rate) for create_voice."""
    from utter_tts.codec.speech_tokenizer import SAMPLE_RATE
    from utter_tts.pipeline import check_ref_text, load_reference

    check_ref_text(args.ref_text)
    return load_reference(args.ref, SAMPLE_RATE), SAMPLE_RATE


# ---------------------------------------------------------------- commands


def _synthesize(args: argparse.Namespace) -> int:
    from utter_tts.request import Request, new_seed, validate

    started = time.perf_counter()
    # every argument, file and the output path is checked before the model loads
    _output_format(args.out)
    _check_out(args.out)
    text = _read_text(args)
    if not text.strip():
        raise InvalidInput("text is empty", param="text", code="empty_text")
    chunks = split_sentences(text, args.max_chunk_chars)
    seed = args.seed if args.seed is not None else new_seed()
    ckpt, device, dtype = _open_model(args)
    fields: dict[str, Any] = {}
    reference = None
    if args.command == "clone":
        if args.voice is not None:
            fields["voice"] = _load_voice(args.voice)
        else:
            reference = _reference(args)
    elif args.command == "design":
        fields["instruct"] = args.description
    else:
        fields.update(speaker=args.speaker, instruct=args.instruct)
    sampling = _sampling(args)
    requests = [
        Request(c, args.command, args.language, seed=seed, sampling=dict(sampling), **fields) for c in chunks
    ]
    for req in requests:  # every chunk checked before any is synthesized
        validate(req, ckpt.config, ckpt.sampling, check_voice=reference is None)

    tts = _load_model(ckpt, device, dtype)
    if reference is not None:
        voice = tts.create_voice(reference, args.ref_text)
        for req in requests:
            req.voice = voice

    from tqdm import tqdm

    wavs = []
    quiet = args.quiet or not sys.stderr.isatty()
    # every chunk redraws the bar (chunks take seconds, so no refresh interval is needed)
    bar = tqdm(
        total=len(requests),
        unit="chunk",
        disable=quiet,
        file=sys.stderr,
        leave=False,
        mininterval=0,
        miniters=1,
    )
    with bar:
        for i in range(0, len(requests), args.batch_size):
            batch = requests[i : i + args.batch_size]
            wavs.extend(tts.synthesize(batch))
            bar.update(len(batch))
    from utter_tts.audio.join import join_clips

    audio = join_clips(wavs, tts.sample_rate, args.pause)
    write_audio(args.out, audio, tts.sample_rate)
    elapsed = time.perf_counter() - started
    n = len(chunks)
    print(
        f"{args.out}: {len(audio) / tts.sample_rate:.2f} s of audio, {n} chunk{'s' if n != 1 else ''}, "
        f"seed {seed}, in {elapsed:.1f} s"
    )
    return 0


def _voice_create(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if Path(args.out).suffix.lower() != ".safetensors":
        raise InvalidInput(f"a voice file is saved as .safetensors, got {args.out!r}", param="out")
    _check_out(args.out)
    ckpt, device, dtype = _open_model(args)
    if ckpt.config.tts_model_type != "base":
        raise InvalidInput(
            f"voices are made with a Base checkpoint; this one is {ckpt.config.tts_model_type}",
            param="model",
            code="unsupported_for_model",
        )
    reference = _reference(args)
    tts = _load_model(ckpt, device, dtype)
    voice = tts.create_voice(reference, args.ref_text)
    try:
        voice.save(args.out)
    except OSError as e:
        raise InvalidInput(f"cannot write {args.out!r}: {e.strerror or e}", param="out") from e
    elapsed = time.perf_counter() - started
    secs = voice.meta.get("ref_seconds")
    print(f"{args.out}: {voice.mode} voice from {secs} s of reference audio, in {elapsed:.1f} s")
    return 0


def _serve(argv: list[str]) -> int:
    try:
        from utter_tts.serve import serve_main
    except ImportError as e:  # the web stack (fastapi, uvicorn, ...) is missing or broken
        print(f"error: the HTTP server cannot start: {e}", file=sys.stderr)
        return 2
    return int(serve_main(argv) or 0)


# ---------------------------------------------------------------- parser


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _chunk_chars(value: str) -> int:
    n = int(value)
    if not 1 <= n <= MAX_CHUNK_CHARS:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_CHUNK_CHARS}], got {value}")
    return n


def _non_negative_float(value: str) -> float:
    x = float(value)
    if not 0.0 <= x <= 10.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 10] seconds, got {value}")
    return x


# The checkpoint each command needs, for its --model help.
MODEL_KIND = {
    "clone": "a Base checkpoint (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-Base)",
    "design": "a VoiceDesign checkpoint (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign)",
    "speak": "a CustomVoice checkpoint (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice)",
    "voice create": "a Base checkpoint (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-Base)",
}


def _model_options(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", required=True, metavar="PATH_OR_ID", help=f"{MODEL_KIND[command]}: a folder or hub id"
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"],
        help="talker weights (default: bfloat16 on cuda, float32 on cpu)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log model loading")


def _synthesis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("text and output")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to speak ('-' reads standard input)")
    src.add_argument(
        "--text-file", metavar="FILE", help="a UTF-8 file holding the text ('-' reads standard input)"
    )
    g.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output audio file: .wav (16-bit PCM), .flac, .mp3, .ogg or .opus (Opus), .aac; "
        "its folder is created if missing",
    )
    g.add_argument("--language", default="auto", help="english, chinese, ... or auto (default)")
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="sampling seed (default: random; printed at the end)",
    )
    g.add_argument(
        "--max-chunk-chars",
        metavar="N",
        type=_chunk_chars,
        default=DEFAULT_CHUNK_CHARS,
        help=f"long texts are split into chunks of whole sentences of at most this many characters "
        f"(default {DEFAULT_CHUNK_CHARS})",
    )
    g.add_argument(
        "--pause",
        metavar="SECONDS",
        type=_non_negative_float,
        default=DEFAULT_PAUSE_S,
        help=f"seconds of silence between chunks (default {DEFAULT_PAUSE_S})",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        metavar="N",
        help="chunks generated together (faster on a GPU)",
    )
    s = p.add_argument_group("sampling (defaults from the checkpoint's generation_config.json)")
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--greedy", action="store_true", help="no sampling (talker and code predictor)")
    s.add_argument(
        "--max-new-tokens",
        type=int,
        help="cap on first-codebook tokens per chunk, as the official code counts them: N gives at most "
        "N - 1 frames of 80 ms (the last token sampled makes no frame)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's own parser (for errors shown with its own usage)."""
    from utter_tts import __version__

    parser = argparse.ArgumentParser(prog="utter-tts", description="Qwen3-TTS speech synthesis.")
    parser.add_argument("--version", action="version", version=f"utter-tts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    p = commands["clone"] = sub.add_parser(
        "clone", help="speak in a cloned voice (Base checkpoint)", description="Speak in a cloned voice."
    )
    _model_options(p, "clone")
    voice = p.add_argument_group("voice").add_mutually_exclusive_group(required=True)
    voice.add_argument("--ref", metavar="AUDIO", help="reference audio (1 to 30 s; wav, flac, mp3, ...)")
    voice.add_argument("--voice", metavar="FILE", help="a voice file from `utter-tts voice create`")
    p.add_argument("--ref-text", help="the words spoken in --ref (better cloning)")
    _synthesis_options(p)

    p = commands["design"] = sub.add_parser(
        "design",
        help="speak in a voice made from a description (VoiceDesign checkpoint)",
        description="Speak in a voice made from a description.",
    )
    _model_options(p, "design")
    p.add_argument("--description", required=True, help="the voice, in words")
    _synthesis_options(p)

    p = commands["speak"] = sub.add_parser(
        "speak",
        help="speak as a preset speaker (CustomVoice checkpoint)",
        description="Speak as a preset speaker.",
    )
    _model_options(p, "speak")
    p.add_argument("--speaker", required=True, help="a preset speaker of the checkpoint")
    p.add_argument("--instruct", help="speaking style, e.g. 'Speak slowly and sadly.'")
    _synthesis_options(p)

    p = commands["voice"] = sub.add_parser(
        "voice", help="make reusable voice files", description="Voice files."
    )
    vsub = p.add_subparsers(dest="voice_command", required=True, metavar="COMMAND")
    p = commands["voice create"] = vsub.add_parser(
        "create",
        help="save a cloned voice from reference audio (Base checkpoint)",
        description="Save a cloned voice from reference audio.",
    )
    _model_options(p, "voice create")
    p.add_argument("--ref", required=True, metavar="AUDIO", help="reference audio (1 to 30 s)")
    p.add_argument("--ref-text", help="the words spoken in --ref (better cloning)")
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the voice file to write (.safetensors); its folder is created if missing",
    )

    # listed for --help only: main() hands `serve ...` to the server's own parser
    sub.add_parser("serve", help="run the HTTP server (utter-tts serve --help)", add_help=False)
    sub.add_parser(
        "wyoming", help="serve Home Assistant's Wyoming protocol (utter-tts wyoming --help)", add_help=False
    )
    return parser, commands


# The command-line option behind each request field an error can name.
OPTION_OF_PARAM = {
    "out": "--out",
    "text_file": "--text-file",
    "ref_audio": "--ref",
    "ref_text": "--ref-text",
    "voice": "--voice",
    "language": "--language",
    "speaker": "--speaker",
    "seed": "--seed",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "repetition_penalty": "--repetition-penalty",
    "max_new_tokens": "--max-new-tokens",
    "do_sample": "--greedy",
    "subtalker_dosample": "--greedy",
    "model": "--model",
    "mode": "--model",  # a request the checkpoint's type cannot serve: the wrong --model
    "device": "--device",
    "dtype": "--dtype",
}


def _option(e: UtterTTSError, args: argparse.Namespace) -> str | None:
    """The option an error is about, as the user typed it."""
    if isinstance(e, CheckpointError):
        return "--model"
    param = getattr(e, "param", None)
    if param == "text":
        return "--text-file" if getattr(args, "text_file", None) is not None else "--text"
    if param == "instruct":
        return "--description" if args.command == "design" else "--instruct"
    return OPTION_OF_PARAM.get(param)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:1] == ["wyoming"]:
        from utter_tts.wyoming_server import main as wyoming_main

        return wyoming_main(argv[1:])
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if args.command == "clone" and args.voice is not None and args.ref_text is not None:
        commands["clone"].error("--ref-text goes with --ref; a voice file already holds its transcript")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "voice":
            return _voice_create(args)
        return _synthesize(args)
    except UtterTTSError as e:
        option = _option(e, args)
        print(f"error: argument {option}: {e}" if option else f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
