"""A bounded LRU of clone prompts keyed by (caller, sha256 of reference audio and transcript).

utter re-sends the same reference clip with every request; with this cache a repeated voice costs a
dictionary lookup instead of decoding, resampling and encoding the clip again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from utter_tts.voices.voice import Voice


def prompt_key(caller: str, audio: bytes, ref_text: str | None) -> tuple[str, str]:
    h = hashlib.sha256(audio)
    # The length prefix keeps (audio, text) pairs unambiguous whatever bytes either holds.
    h.update(b"\0" + str(len(audio)).encode() + b"\0" + (ref_text or "").encode("utf-8"))
    return caller, h.hexdigest()


class PromptCache:
    """Thread-safe LRU with hit/miss counters (reported by get_model_info)."""

    def __init__(self, size: int = 128):
        if size < 0:
            raise ValueError("cache size must be >= 0")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, str], Voice] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str]) -> Voice | None:
        with self._lock:
            voice = self._items.get(key)
            if voice is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return voice

    def put(self, key: tuple[str, str], voice: Voice) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[key] = voice
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
