"""Long text: split documents at sentence boundaries and cap each generation's frames by its text."""

from __future__ import annotations

import re

# Sentence ends (Latin and CJK punctuation), then any closing quotes/brackets, then space or end.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？…])[\"'”’)\]」』]*\s+|(?<=[。！？])|\n\s*\n")
_CLAUSE_END = re.compile(r"(?<=[,;:，；：、])\s*")

# Frames per text token: speech runs at 2-6 tokens/s and the codec at 12.5 frames/s, so 8 frames a
# token is twice the slowest reading; the constant covers short texts and trailing silence.
FRAMES_PER_TOKEN = 8
FRAMES_BASE = 25


def frame_cap(n_text_tokens: int) -> int:
    """Most frames a text of this many tokens may take: a missing end token cannot run away."""
    return FRAMES_BASE + FRAMES_PER_TOKEN * n_text_tokens


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split at sentence ends; sentences longer than max_chars are split at clauses, then at spaces,
    then hard. Short neighbours are merged up to max_chars so each piece is a comfortable generation."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _CLAUSE_END.split(sentence):
            pieces.extend(_hard_split(clause.strip(), max_chars))
    merged: list[str] = []
    for p in pieces:
        if not p:
            continue
        joiner = "" if _is_cjk(p[:1]) else " "
        if merged and len(merged[-1]) + len(joiner) + len(p) <= max_chars:
            merged[-1] = merged[-1] + joiner + p
        else:
            merged.append(p)
    return merged


def _hard_split(s: str, max_chars: int) -> list[str]:
    out = []
    while len(s) > max_chars:
        cut = s.rfind(" ", 0, max_chars)
        cut = cut if cut > max_chars // 2 else max_chars
        out.append(s[:cut].strip())
        s = s[cut:].strip()
    if s:
        out.append(s)
    return out


def _is_cjk(ch: str) -> bool:
    return bool(ch) and (
        "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uff00" <= ch <= "\uffef"
    )
