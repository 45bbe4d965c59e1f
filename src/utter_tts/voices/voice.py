"""Voice: a reusable, serializable clone prompt (speaker embedding, reference codes, transcript)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from utter_tts.errors import InvalidInput
from utter_tts.files import write_atomic

FORMAT_VERSION = "1"


@dataclass
class Voice:
    """What the Base model needs to speak in a cloned voice.

    x-vector mode uses the speaker embedding only; ICL mode (better quality) also places the
    reference codes and their transcript in the prompt, and needs `ref_text`.
    """

    speaker_embedding: torch.Tensor  # [D] float32
    ref_codes: torch.Tensor | None = None  # [F, 16] int64, present for ICL
    ref_text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "icl" if self.ref_codes is not None and self.ref_text else "xvector"

    @property
    def dim(self) -> int:
        return int(self.speaker_embedding.shape[-1])

    def to_bytes(self) -> bytes:
        tensors = {"speaker_embedding": self.speaker_embedding.detach().float().cpu().contiguous()}
        if self.ref_codes is not None:
            tensors["ref_codes"] = self.ref_codes.detach().to(torch.int64).cpu().contiguous()
        metadata = {
            "format": "utter-tts-voice",
            "version": FORMAT_VERSION,
            "ref_text": json.dumps(self.ref_text),
            "meta": json.dumps(self.meta),
        }
        raw = st_save(tensors, metadata=metadata)
        # safetensors writes its header maps in hash order: sort it, so equal voices give equal bytes
        n = int.from_bytes(raw[:8], "little")
        header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        return len(header).to_bytes(8, "little") + header + raw[8 + n :]

    @classmethod
    def from_bytes(cls, data: bytes) -> Voice:
        try:
            tensors = st_load(data)
            metadata = _read_metadata(data)
        except Exception as e:  # safetensors raises several types for garbage input
            raise InvalidInput(f"not a voice file: {e}", param="voice", code="invalid_voice") from e
        if metadata.get("format") != "utter-tts-voice" or "speaker_embedding" not in tensors:
            raise InvalidInput(
                "not a voice file (missing utter-tts-voice header)", param="voice", code="invalid_voice"
            )
        emb = tensors["speaker_embedding"]
        codes = tensors.get("ref_codes")
        if emb.ndim != 1 or (codes is not None and (codes.ndim != 2 or codes.shape[1] < 1)):
            raise InvalidInput(
                "voice file has tensors of the wrong shape", param="voice", code="invalid_voice"
            )
        try:
            ref_text = json.loads(metadata.get("ref_text", "null"))
            meta = json.loads(metadata.get("meta", "{}"))
        except ValueError as e:
            raise InvalidInput(
                f"not a voice file: bad metadata ({e})", param="voice", code="invalid_voice"
            ) from e
        if not (ref_text is None or isinstance(ref_text, str)) or not isinstance(meta, dict):
            raise InvalidInput("not a voice file: bad metadata types", param="voice", code="invalid_voice")
        return cls(speaker_embedding=emb, ref_codes=codes, ref_text=ref_text, meta=meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically and durably: a crash mid-write leaves the old file or none, never a torn one."""
        write_atomic(path, self.to_bytes(), durable=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Voice:
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    def content_hash(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors header: 8-byte little-endian length, then JSON with an optional __metadata__ entry
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {}) or {}
