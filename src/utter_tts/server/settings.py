"""Server settings: models, binding, data directory, API keys and every limit, from flags or env."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path


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
    max_job_chars: int = 200_000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_ref_seconds: float = 30.0
    max_concurrency: int = 2
    engine: str = "auto"  # continuous batching: "on", "off", or "auto" (on for CUDA devices)
    engine_streams: int = 16
    max_queue: int = 16
    max_voices_per_key: int = 1000
    max_jobs_per_key: int = 8
    voice_cache_size: int = 64
    max_new_tokens: int | None = None  # cap on generated frames per request (None: the model's own)
    # OpenAI voice name -> saved voice or preset speaker, over the defaults in synthesis.OPENAI_VOICES
    openai_voices: dict[str, str] = field(default_factory=dict)
    job_ttl_s: float = 3600.0
    shutdown_grace_s: float = 10.0
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
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
