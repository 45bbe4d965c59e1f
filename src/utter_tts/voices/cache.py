"""The one cache of clone prompts: a bounded, thread-safe LRU of Voices that counts its hits and misses."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from utter_tts.voices.voice import Voice


class VoiceCache:
    """Voices by key, least recently used dropped first once more than `size` are held (0 holds none).

    The voice library keys its stored voices by (owner, content hash); the faces key voices built from
    reference audio sent inline by (owner, hash of the clip and transcript), see utter_tts.service."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError("cache size must be >= 0")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Voice] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Voice | None:
        with self._lock:
            voice = self._items.get(key)
            if voice is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return voice

    def put(self, key: Hashable, voice: Voice) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[key] = voice
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
