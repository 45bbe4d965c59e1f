"""Server settings: models, binding, data directory, API keys and every limit, and the `utter-tts serve`
flags and environment variables that fill them."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

# the engine's weight modes (engine.runner.WEIGHT_MODES; named here so the flags parse without torch)
WEIGHTS = ("bf16", "int8", "fp8")


def default_data_dir() -> Path:
    """`$UTTER_TTS_DATA_DIR`, else the XDG data home."""
    if os.environ.get("UTTER_TTS_DATA_DIR"):
        return Path(os.environ["UTTER_TTS_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "utter-tts"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (auth defaults to off there)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    """Everything `create_app` needs; the CLI fills it from flags and environment."""

    models: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=default_data_dir)
    device: str = "cpu"
    dtype: str = "float32"
    api_keys: list[str] = field(default_factory=list)
    auth: str = "auto"  # "auto" (on unless bound to loopback), "on", "off"
    max_input_chars: int = 4096
    # a live WebSocket session's text moves to a new generation at the first sentence end past this many
    # characters (~40 s of speech: well inside a generation's frames and text rows)
    live_rollover_chars: int = 600
    max_job_chars: int = 200_000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_ref_seconds: float = 30.0
    max_concurrency: int = 2
    engine: str = "auto"  # continuous batching: "on", "off", or "auto" (on for CUDA devices)
    engine_streams: int = 16
    weights: str = "bf16"  # the engine's GEMM weights: bf16 (as loaded), int8 or fp8 (8 bits per weight)
    # "exit": models load before the port is bound and a failure ends the process (status 2);
    # "serve": bind first, load in the background, and report a failure on /health (503)
    on_load_error: str = "exit"
    max_queue: int = 16
    max_voices_per_key: int = 1000
    max_jobs_per_key: int = 8
    voice_cache_size: int = 64
    max_new_tokens: int | None = None  # cap on generated frames per request (None: the model's own)
    # OpenAI voice name -> saved voice or preset speaker, over the defaults in planner.OPENAI_VOICES
    openai_voices: dict[str, str] = field(default_factory=dict)
    job_ttl_s: float = 3600.0
    shutdown_grace_s: float = 10.0
    fault_drain_s: float = 2.0  # after a sticky GPU fault: answer 503 this long, then exit with status 1
    retry_after_s: int = 2
    # Sleep after every generated chunk; a diagnostic knob tests use to prove streaming is incremental.
    chunk_delay_s: float = 0.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()

    @property
    def auth_enabled(self) -> bool:
        if self.auth == "on":
            return True
        if self.auth == "off":
            return False
        return not is_loopback(self.host) or bool(self.api_keys)

    def check(self) -> None:
        """Refuse configurations that would be unsafe or cannot work."""
        if self.auth not in ("auto", "on", "off"):
            raise ValueError(f"auth must be auto, on or off, not {self.auth!r}")
        if self.auth_enabled and not self.api_keys:
            raise ValueError(
                f"API keys are required when binding to {self.host!r}: pass --api-key or set "
                "UTTER_TTS_API_KEYS (comma-separated), or --auth off to serve without keys"
            )
        if self.on_load_error not in ("exit", "serve"):
            raise ValueError(f"on_load_error must be exit or serve, not {self.on_load_error!r}")
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        if self.live_rollover_chars < 1:
            raise ValueError("live_rollover_chars must be >= 1")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {self.weights!r}")
        if self.weights != "bf16" and self.engine == "off":
            raise ValueError(
                f"--weights {self.weights} needs the engine (its fused kernels): not --engine off"
            )


def build_parser(prog: str = "utter-tts serve") -> argparse.ArgumentParser:
    """The server's flags (`python -m utter_tts.server`); `utter-tts serve` adds utter's routes' flags."""
    p = argparse.ArgumentParser(prog=prog, description="Serve Qwen3-TTS over an OpenAI-compatible HTTP API.")
    p.add_argument("models", nargs="+", help="checkpoint folders or hub ids (Base, VoiceDesign, CustomVoice)")
    p.add_argument(
        "--host",
        default=os.environ.get("UTTER_TTS_HOST", "127.0.0.1"),
        help="address to bind (env UTTER_TTS_HOST; default: %(default)s)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("UTTER_TTS_PORT", "8000")),
        help="port to bind (env UTTER_TTS_PORT; default: %(default)s)",
    )
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
    p.add_argument(
        "--engine-streams",
        type=int,
        default=16,
        help="streams batched per model by the engine (default: %(default)s)",
    )
    p.add_argument(
        "--weights",
        choices=list(WEIGHTS),
        default="bf16",
        help="the engine's GEMM weights: bf16 as loaded, or 8 bits scaled per output channel: int8 (Ampere "
        "and newer, e.g. A10G) or fp8 (compute capability 8.9+, e.g. H100/H200) (default: %(default)s)",
    )
    p.add_argument(
        "--on-load-error",
        choices=["exit", "serve"],
        default=os.environ.get("UTTER_TTS_ON_LOAD_ERROR", "exit"),
        help="exit: load the models before binding the port and exit with status 2 if one fails, so a "
        "supervisor sees it; serve: bind at once, load in the background, report a failure on /health "
        "(503) and keep running (env UTTER_TTS_ON_LOAD_ERROR; default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests waiting for a slot before 429 (default: %(default)s)",
    )
    p.add_argument(
        "--max-input-chars",
        type=int,
        default=4096,
        help="longest input text of one speech request, in characters (default: %(default)s)",
    )
    p.add_argument(
        "--live-rollover-chars",
        type=int,
        default=600,
        help="a live WebSocket session moves to a new generation at the first sentence end past this "
        "many characters of text (default: %(default)s)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        help="largest reference-audio upload, in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--max-ref-seconds",
        type=float,
        default=30.0,
        help="longest reference audio, in seconds (default: %(default)s)",
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated frames per request")
    p.add_argument(
        "--openai-voice",
        action="append",
        default=[],
        metavar="NAME=VOICE",
        help="map one of OpenAI's voice names (alloy, echo, ...) to a saved voice or preset speaker "
        "(repeatable; env UTTER_TTS_OPENAI_VOICES=alloy=me,echo=ryan)",
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
    """The settings the parsed flags and the environment ask for (not yet checked: `create_app` does)."""
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
        weights=args.weights,
        on_load_error=args.on_load_error,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        live_rollover_chars=args.live_rollover_chars,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_ref_seconds=args.max_ref_seconds,
        max_new_tokens=args.max_new_tokens,
        openai_voices=parse_voice_map(
            [x for x in os.environ.get("UTTER_TTS_OPENAI_VOICES", "").split(",") if x.strip()]
            + list(args.openai_voice)
        ),
    )
