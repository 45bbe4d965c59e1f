"""The one check every face (API, server, WebSocket, jobs, utter's routes) runs on text from a caller."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from utter_tts.errors import InvalidInput

# A lone UTF-16 surrogate: JSON's "\ud800" escape decodes to one, and no UTF-8 encoder (the tokenizer,
# SQLite, a JSON response) accepts it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0/C1 control characters except the whitespace ones (tab, line feed, vertical tab, form feed,
# carriage return, next line): NUL and friends only ever come from a broken or hostile client.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
# Strings the official tokenizer turns into control tokens (chat turns, audio/TTS markers). Ours encodes
# them as plain bytes, so the API lets them through; the server refuses them (`no_markup`) so that a
# request behaves the same whichever Qwen3-TTS implementation runs behind it.
_MARKUP = re.compile(r"<\|[^<>|\s]{1,40}\|>|<tts_[a-z_]{1,30}>", re.IGNORECASE)
MARKUP_MAX_CHARS = 44  # the longest string _MARKUP matches: "<|" + 40 + "|>"


class InvalidText(InvalidInput):
    """A text field that is not speakable text; `why` is the reason without the field's name (utter's
    routes phrase the field their own way)."""

    code = "invalid_text"

    def __init__(self, param: str, why: str):
        super().__init__(f"{param} {why}", param=param)
        self.why = why


def check_text(
    value: Any,
    param: str,
    max_chars: int | None = None,
    *,
    allow_empty: bool = False,
    no_markup: bool = False,
) -> str:
    """`value` as NFC-normalized text, or InvalidInput naming `param`: not a string (invalid_type); a
    lone surrogate, a control character other than whitespace, or nothing but whitespace unless
    `allow_empty` (invalid_text); longer than `max_chars` (text_too_long); with `no_markup`, a
    special-token string (special_token). The text is not stripped: callers decide about edges."""
    if not isinstance(value, str):
        raise InvalidInput(
            f"{param} must be a string, got {type(value).__name__}", param=param, code="invalid_type"
        )
    bad = _SURROGATE.search(value)
    if bad:
        raise InvalidText(
            param, f"contains a lone UTF-16 surrogate at index {bad.start()}: it is not valid Unicode text"
        )
    bad = _CONTROL.search(value)
    if bad:
        raise InvalidText(
            param, f"contains the control character U+{ord(bad.group()):04X} at index {bad.start()}"
        )
    text = unicodedata.normalize("NFC", value)
    if not allow_empty and not text.strip():
        raise InvalidText(param, "is empty")
    if max_chars is not None and len(text) > max_chars:
        raise InvalidInput(
            f"{param} is {len(text)} characters long; the limit is {max_chars}",
            param=param,
            code="text_too_long",
        )
    if no_markup and _MARKUP.search(text):
        raise InvalidInput(
            f"{param} contains a reserved special-token string", param=param, code="special_token"
        )
    return text


def check_appended(previous: str, piece: str, param: str) -> None:
    """InvalidInput (special_token) when `piece`, appended to `previous` text (which holds none), would
    complete a special-token string: text that arrives in pieces meets the same rule as whole text, also
    when the string is split across pieces. Only the tail can match, so the check costs O(piece)."""
    tail = previous[-MARKUP_MAX_CHARS:] + piece
    if _MARKUP.search(tail):
        raise InvalidInput(
            f"{param} would contain a reserved special-token string (split across appended pieces)",
            param=param,
            code="special_token",
        )


def printable(message: str) -> str:
    """`message` with any lone surrogate written as a `\\udXXX` escape, so it can always be sent as UTF-8
    (error messages may quote what the caller sent)."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")
