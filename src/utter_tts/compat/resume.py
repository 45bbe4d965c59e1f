"""Durable progress of utter's long jobs: each finished sentence's codes kept in the job store, so a job
that starts again (a restarted process, a retried or preempted Modal call) goes on from its first
unfinished sentence and ends with the audio an uninterrupted run gives.

What is kept, per job `key`, in the job store (a RecordStore folder locally, the `modal.Dict` on Modal):

- `resume:<key>`: {format, seed, fingerprint, total, done, attempts}, written before the first sentence;
  `done` counts the sentences whose chunks are stored (always a prefix: they are saved in order).
- `chunk:<key>:<index>`: one sentence's codes (int16 [frames, 16], base64) with their SHA-256 and the
  job's fingerprint.

Codes, not audio: a sentence's codes are a few KB where its float32 audio is ~1 MB (a `modal.Dict` value
travels in one request), and the job path decodes every sentence from the very codes it stores, fresh or
resumed, so the audio is the same either way. A stored state that does not fit (no seed, other settings,
a chunk missing or corrupt) is dropped and the job starts from its first sentence: never a mix of voices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("utter_tts.compat")

FORMAT = 1
CODE_GROUPS = 16


def fingerprint(settings: dict[str, Any]) -> str:
    """A digest of everything that decides a job's audio (text, voice, language, caps, model, seed)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def pack_codes(codes: np.ndarray, fp: str, index: int) -> dict[str, Any]:
    """A chunk record for one sentence's codes [frames, 16] (int16: codebook ids are < 2**15)."""
    raw = np.ascontiguousarray(codes, dtype="<i2").tobytes()
    return {
        "index": index,
        "fingerprint": fp,
        "frames": int(codes.shape[0]),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "codes": base64.b64encode(raw).decode("ascii"),
    }


def unpack_codes(record: Any, fp: str, index: int) -> np.ndarray | None:
    """The codes of a chunk record (int64 [frames, 16]), or None when it is not this job's chunk `index`
    or does not check out (truncated, edited, of another attempt's settings)."""
    try:
        if record["index"] != index or record["fingerprint"] != fp:
            return None
        raw = base64.b64decode(record["codes"], validate=True)
        frames = int(record["frames"])
        if len(raw) != frames * CODE_GROUPS * 2 or hashlib.sha256(raw).hexdigest() != record["sha256"]:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return np.frombuffer(raw, dtype="<i2").reshape(frames, CODE_GROUPS).astype(np.int64)


@dataclass
class JobCheckpoint:
    """One job's stored progress in a job store (anything with `get` and item assignment)."""

    store: Any
    key: str
    seed: int | None = None
    resumed_from: int = 0  # sentences found done when this attempt began
    attempt: int = 0  # 1 for a job's first run, 2 for the run after one interruption, ...
    restarted: str | None = None  # why stored progress was dropped, if it was
    _fp: str = field(default="", repr=False)
    _manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def _chunk_key(self, index: int) -> str:
        return f"chunk:{self.key}:{index:05d}"

    def begin(self, seed: int | None, settings: dict[str, Any], total: int, new_seed) -> list[np.ndarray]:
        """Start or resume: the codes of the sentences already done (a prefix of the job's `total`).
        The seed is the one given (fixed at submission), else the stored one, else `new_seed()`; it is
        stored, with the settings' fingerprint, before any sentence is made."""
        stored = self.store.get(f"resume:{self.key}")
        stored = stored if isinstance(stored, dict) and stored.get("format") == FORMAT else None
        stored_seed = stored.get("seed") if stored else None
        if seed is None:
            seed = stored_seed if isinstance(stored_seed, int) else new_seed()
        self.seed = seed
        self._fp = fingerprint({**settings, "seed": seed, "total": total})
        self.attempt = (stored.get("attempts", 0) if stored else 0) + 1
        done: list[np.ndarray] = []
        if stored is not None:
            done = self._load(stored, total)
        self.resumed_from = len(done)
        self._manifest = {
            "format": FORMAT,
            "seed": seed,
            "fingerprint": self._fp,
            "total": total,
            "done": len(done),
            "attempts": self.attempt,
        }
        self.store[f"resume:{self.key}"] = self._manifest
        if self.resumed_from:
            log.info("job %s resumed at sentence %d of %d", self.key, self.resumed_from, total)
        elif self.restarted:
            log.warning("job %s starts again from its first sentence: %s", self.key, self.restarted)
        return done

    def _load(self, stored: dict[str, Any], total: int) -> list[np.ndarray]:
        if stored.get("seed") != self.seed or stored.get("fingerprint") != self._fp:
            self.restarted = "its settings or seed changed"
            return []
        count = stored.get("done")
        if not isinstance(count, int) or not 0 <= count <= total:
            self.restarted = "its progress record is corrupt"
            return []
        done = []
        for index in range(count):
            codes = unpack_codes(self.store.get(self._chunk_key(index)), self._fp, index)
            if codes is None:
                self.restarted = f"stored sentence {index} is missing or corrupt"
                return []
            done.append(codes)
        return done

    def save(self, start: int, codes: list[np.ndarray]) -> None:
        """Keep the codes of sentences start, start+1, ...; the count moves only once they are stored."""
        for offset, c in enumerate(codes):
            self.store[self._chunk_key(start + offset)] = pack_codes(c, self._fp, start + offset)
        self._manifest = {**self._manifest, "done": start + len(codes)}
        self.store[f"resume:{self.key}"] = self._manifest

    def clear(self) -> None:
        """Forget the stored progress (the job ended: its result is kept elsewhere)."""
        manifest = self._manifest or self.store.get(f"resume:{self.key}") or {}
        total = manifest.get("total", 0) if isinstance(manifest, dict) else 0
        for key in [self._chunk_key(i) for i in range(total)] + [f"resume:{self.key}"]:
            drop(self.store, key)


def drop(store: Any, key: str) -> None:
    """Remove `key` from a RecordStore (`delete`) or a dict / `modal.Dict` (`pop`); absent is fine."""
    try:
        if hasattr(store, "delete"):
            store.delete(key)
        else:
            store.pop(key, None)
    except Exception as e:  # a left-over chunk costs a little space; the Dict expires it after 7 days
        log.warning("could not remove %s: %s", key, e)
