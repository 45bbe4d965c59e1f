"""Text that is still being written (dual-track streaming): which of its tokens are final so far.

Qwen3-TTS in streaming-text mode takes its text one token a frame, so a generation can start before the
whole text exists (an LLM still writing it). A token may only be fed once no later text can change it:
BPE never merges across a pre-token of the tokenizer's split, so a token is final once the pre-token it
belongs to is complete, i.e. once a later pre-token has begun. NFC (the tokenizer's and our text check's
normalization) can only change the text from its last starter character on, so nothing at or after that
character is final either. The committed ids are then always a prefix of the ids of the whole text.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable

from utter_tts.errors import InvalidInput
from utter_tts.model.tokenizer import TextTokenizer

ROLE = "assistant\n"  # the text is tokenized after its turn's role, as `TextTokenizer.assistant_text` does
ROLE_IDS = 2  # "assistant", "\n": the ids before the text's own (`PromptPlan.text_ids[1:3]`)


def _last_starter(text: str) -> int:
    """Index of the last character that NFC may still combine with what comes next (len if none)."""
    for i in range(len(text) - 1, -1, -1):
        if unicodedata.combining(text[i]) == 0:
            return i
    return len(text)


def final_ids(tokenizer: TextTokenizer, text: str, closed: bool) -> list[int]:
    """The ids of `ROLE + text` (NFC) that no continuation of `text` can change; all of them if `closed`."""
    full = ROLE + unicodedata.normalize("NFC", text)
    enc = tokenizer.bpe.encode(full, add_special_tokens=False)
    if closed:
        return list(enc.ids)
    pieces = tokenizer.bpe.pre_tokenizer.pre_tokenize_str(full)
    cut = min(pieces[-1][1][0], _last_starter(full))
    return [i for i, (_, end) in zip(enc.ids, enc.offsets) if end <= cut]


class TextFeed:
    """The text of one generation as it arrives: `append` pieces, then `close`. Thread-safe: a caller
    appends while the engine reads `snapshot()`; `on_change` callbacks run after every append or close."""

    def __init__(self, tokenizer: TextTokenizer, max_chars: int | None = None):
        self.tokenizer = tokenizer
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._cond = threading.Condition()  # waiters for more text (the plain loop)
        self._text = ""
        self._ids: list[int] = []  # final ids of ROLE + text so far
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self.version = 0  # counts appends and the close (`wait` for a change)

    def append(self, piece: str) -> None:
        with self._lock:
            if self._closed:
                raise InvalidInput("the text is closed; start a new generation", param="text")
            text = self._text + piece
            if self.max_chars is not None and len(text) > self.max_chars:
                raise InvalidInput(
                    f"text is longer than {self.max_chars} characters", param="text", code="text_too_long"
                )
            self._commit(text, closed=False)
        self._changed()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._commit(self._text, closed=True)
        self._changed()

    def _commit(self, text: str, closed: bool) -> None:
        ids = final_ids(self.tokenizer, text, closed)
        # final means final: a later call that disagreed would be a bug here, never the caller's text
        assert ids[: len(self._ids)] == self._ids, "committed text tokens changed"
        self._text, self._ids, self._closed = text, ids, closed
        self.version += 1

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()
        for callback in list(self._listeners):
            callback()

    def wait(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until `ready()` (checked after every append or close), or the timeout; returns ready()."""
        with self._cond:
            return self._cond.wait_for(ready, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def text(self) -> str:
        return self._text

    def snapshot(self) -> tuple[list[int], bool]:
        """(the final ids of ROLE + the text: its role's `ROLE_IDS` first; whether the text is closed)."""
        with self._lock:
            return list(self._ids), self._closed
