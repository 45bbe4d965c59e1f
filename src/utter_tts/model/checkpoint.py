"""Checkpoint loading: resolve a folder or hub id, check the official layout, load weights key for key."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from utter_tts.errors import CheckpointError, InvalidInput
from utter_tts.model.config import SamplingConfig, TTSConfig
from utter_tts.model.talker import Talker
from utter_tts.model.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "vocab.json", "merges.txt", "speech_tokenizer/config.json")
# What settles whether a request fits a checkpoint (type, languages, speakers, tokenizer): fetched from
# the hub before the weights, so bad input is refused before a multi-GB download.
SMALL_FILES = ("*.json", "*.txt")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidInput(
            f"unsupported dtype {dtype!r}; use one of {sorted(set(DTYPES))}", param="dtype"
        ) from None


def resolve(
    path_or_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    small_files_only: bool = False,
) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id, downloaded (or found in the cache);
    `small_files_only` fetches configs and tokenizer files, not the weights."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    name = str(path_or_id)
    # a hub id is exactly "owner/name": anything else (a path, a trailing slash) names a folder
    if p.exists() or name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") != 1:
        raise CheckpointError(
            f"checkpoint folder {name!r} does not exist (and is not a hub id like 'Qwen/...')"
        )
    from huggingface_hub import snapshot_download

    try:
        patterns = list(SMALL_FILES) if small_files_only else None
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:  # network errors, missing repo, offline mode: all surface the same way
        raise CheckpointError(f"could not download {name!r} from the Hugging Face hub: {e}") from e


def check_layout(folder: Path, weights: bool = True) -> None:
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if weights and not list(folder.glob("*.safetensors")):
        missing.append("*.safetensors (model weights)")
    if weights and not list((folder / "speech_tokenizer").glob("*.safetensors")):
        missing.append("speech_tokenizer/*.safetensors (codec weights)")
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing: {', '.join(missing)}")


def read_safetensors(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors under `prefix` from every *.safetensors file of the folder (sharded or not), prefix cut."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix) :]] = st.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f} is not a readable safetensors file: {e}") from e
    return out


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: weights do not match the architecture; missing {sorted(missing)[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # same keys, other shapes: a config that does not fit the weights
        raise CheckpointError(f"{what}: weights do not fit config.json: {e}") from e


@dataclass
class Checkpoint:
    folder: Path
    config: TTSConfig
    sampling: SamplingConfig
    tokenizer: TextTokenizer
    source: str = ""  # the folder or hub id it was opened from
    revision: str | None = None
    has_weights: bool = True  # False when opened from the hub without its weights (`weights=False`)

    def with_weights(self) -> Checkpoint:
        """This checkpoint with its weights on disk (downloads them when it was opened without)."""
        return self if self.has_weights else open_checkpoint(self.source, self.revision)


def open_checkpoint(
    path_or_id: str | os.PathLike, revision: str | None = None, weights: bool = True
) -> Checkpoint:
    """Config, sampling defaults and tokenizer of a folder or hub id. With `weights=False` a hub id
    fetches only its small files (a local folder is checked whole either way)."""
    local = Path(path_or_id).expanduser().is_dir()
    folder = resolve(path_or_id, revision, small_files_only=not weights and not local)
    has_weights = weights or local
    check_layout(folder, weights=has_weights)
    try:
        config = TTSConfig.from_file(folder / "config.json")
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{folder / 'config.json'} is not a Qwen3-TTS config: {e}") from e
    gen = folder / "generation_config.json"
    try:
        sampling = SamplingConfig.from_file(gen) if gen.is_file() else SamplingConfig()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{gen} is not a generation config: {e}") from e
    try:
        tokenizer = TextTokenizer(folder, config.im_start_token_id, config.im_end_token_id)
    except Exception as e:  # the tokenizers library raises a bare Exception for unreadable BPE files
        raise CheckpointError(
            f"tokenizer files vocab.json / merges.txt in {folder} are unreadable: {e}"
        ) from e
    return Checkpoint(folder, config, sampling, tokenizer, str(path_or_id), revision, has_weights)


def load_talker(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> Talker:
    # build on the meta device (no random init of ~2B parameters), then fill from the checkpoint
    with torch.device("meta"):
        talker = Talker(ckpt.config.talker).to(dtype)
    talker = talker.to_empty(device=device)
    for rotary in (talker.rotary, talker.code_predictor.rotary):
        rotary.reset_buffers(device)  # fp32 tables, never cast to the weights' dtype
    state = read_safetensors(ckpt.folder, "talker.")
    load_strict(talker, state, "talker")
    return talker.eval()
