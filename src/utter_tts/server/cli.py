"""`utter-tts serve`: parse flags and environment, then run the app under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from utter_tts.server.config import ServerConfig, default_data_dir


def build_parser(prog: str = "utter-tts serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Serve Qwen3-TTS over an OpenAI-compatible HTTP API.")
    p.add_argument("models", nargs="+", help="checkpoint folders or hub ids (Base, VoiceDesign, CustomVoice)")
    p.add_argument("--host", default=os.environ.get("UTTER_TTS_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("UTTER_TTS_PORT", "8000")))
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="voice library and job files (env UTTER_TTS_DATA_DIR; default ~/.local/share/utter-tts)",
    )
    p.add_argument(
        "--device", default=os.environ.get("UTTER_TTS_DEVICE"), help="cpu, cuda, cuda:1 (default: auto)"
    )
    p.add_argument(
        "--dtype", default=os.environ.get("UTTER_TTS_DTYPE"), help="float32, bfloat16 (default: auto)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted Bearer key (repeatable; env UTTER_TTS_API_KEYS, comma-separated)",
    )
    p.add_argument(
        "--auth",
        choices=["auto", "on", "off"],
        default=os.environ.get("UTTER_TTS_AUTH", "auto"),
        help="auto: keys required unless bound to localhost",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="generations running at once (default: --engine-streams when the engine runs, else 2)",
    )
    p.add_argument(
        "--engine",
        choices=["auto", "on", "off"],
        default="auto",
        help="continuous batching engine (auto: on when the device is CUDA)",
    )
    p.add_argument("--engine-streams", type=int, default=16, help="streams batched per model by the engine")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot before 429")
    p.add_argument("--max-input-chars", type=int, default=4096)
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument("--max-ref-seconds", type=float, default=30.0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated frames per request")
    p.add_argument(
        "--openai-voice",
        action="append",
        default=[],
        metavar="NAME=VOICE",
        help="map one of OpenAI's voice names (alloy, echo, ...) to a saved voice or preset speaker "
        "(repeatable; env UTTER_TTS_OPENAI_VOICES=alloy=me,echo=ryan)",
    )
    p.add_argument(
        "--compat",
        action="store_true",
        help="also serve utter's routes (/clone, /clone-batch, /design, /submit-job, /job-status, ...) as "
        "its Modal app did, jobs run in this process (docs/deploy-modal.md)",
    )
    p.add_argument(
        "--compat-auth",
        choices=["on", "off"],
        default=os.environ.get("UTTER_TTS_COMPAT_AUTH", "on"),
        help="off: utter's routes take no API key (the others keep theirs), so utter's client works "
        "unchanged; anyone who can reach the port can use them (env UTTER_TTS_COMPAT_AUTH)",
    )
    p.add_argument("--log-level", default="info")
    return p


def parse_voice_map(items: list[str]) -> dict[str, str]:
    """NAME=VOICE pairs as a dict; ValueError naming the first malformed one."""
    out = {}
    for item in items:
        name, sep, voice = item.partition("=")
        if not sep or not name.strip() or not voice.strip():
            raise ValueError(f"--openai-voice wants NAME=VOICE, got {item!r}")
        out[name.strip().lower()] = voice.strip()
    return out


def default_concurrency(args: argparse.Namespace) -> int:
    """With the engine, concurrent requests share GPU frames, so let as many run as it has streams;
    without it each generation owns the model for its duration, so a couple at a time."""
    device = args.device or ""
    cuda = device.startswith("cuda") or (device in ("", "auto") and _cuda_available())
    engine_on = args.engine == "on" or (args.engine == "auto" and cuda)
    return args.engine_streams if engine_on else 2


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    keys = list(args.api_key)
    keys += [k.strip() for k in os.environ.get("UTTER_TTS_API_KEYS", "").split(",") if k.strip()]
    return ServerConfig(
        models=list(args.models),
        host=args.host,
        port=args.port,
        data_dir=args.data_dir or default_data_dir(),
        device=args.device,
        dtype=args.dtype,
        api_keys=keys,
        auth=args.auth,
        max_concurrency=args.max_concurrency or default_concurrency(args),
        engine=args.engine,
        engine_streams=args.engine_streams,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_ref_seconds=args.max_ref_seconds,
        max_new_tokens=args.max_new_tokens,
        openai_voices=parse_voice_map(
            [x for x in os.environ.get("UTTER_TTS_OPENAI_VOICES", "").split(",") if x.strip()]
            + list(args.openai_voice)
        ),
    )


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of `utter-tts serve` (the top-level CLI passes the arguments after `serve`)."""
    import uvicorn

    from utter_tts.server.app import create_app

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        app = create_app(config)
    except ValueError as e:
        build_parser().error(str(e))
    runner = None
    if args.compat:
        from utter_tts.compat.deploy import mount_on_server

        runner = mount_on_server(app, auth=args.compat_auth == "on")
    elif args.compat_auth == "off":
        build_parser().error("--compat-auth off goes with --compat")
    try:
        uvicorn.run(
            app,
            host=config.host,
            port=config.port,
            log_level=args.log_level.lower(),
            timeout_graceful_shutdown=int(config.shutdown_grace_s) + 5,
            ws_max_size=4 * 1024 * 1024,
        )
    finally:
        if runner is not None:
            runner.close()
    return 0
