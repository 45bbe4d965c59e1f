"""Long text: split documents at sentence boundaries and cap each generation's frames by its text."""

from __future__ import annotations

import re

# Frames per text token: speech runs at 2-6 tokens/s and the codec at 12.5 frames/s, so 8 frames a
# token is twice the slowest reading; the constant covers short texts and trailing silence.
FRAMES_PER_TOKEN = 8
FRAMES_BASE = 25


def frame_cap(n_text_tokens: int) -> int:
    """Most frames a text of this many tokens may take: a missing end token cannot run away."""
    return FRAMES_BASE + FRAMES_PER_TOKEN * n_text_tokens


# A sentence ends at . ! ? … (plus closing quotes/brackets) before whitespace, or at 。！？ anywhere.
_SENTENCE_END = re.compile(r"""([.!?…]+["'”’)\]]*)\s+|([。！？]+[」』”’）)]*)\s*""")
_CLAUSE_END = re.compile(r"""[,;:，、；：]["'”’)\]」』）]*\s*""")


def _is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80  # CJK scripts and punctuation, kana, hangul: written without spaces


def _sentences(line: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        out.append(line[start : m.end(1) if m.group(1) else m.end(2)])
        start = m.end()
    out.append(line[start:])
    return [s.strip() for s in out if s.strip()]


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut a sentence longer than max_chars at its last clause mark (, ; : ，、) that fits, else at the
    last space, else hard."""
    out = []
    s = sentence
    while len(s) > max_chars:
        head = s[: max_chars + 1]
        cut = 0
        for m in _CLAUSE_END.finditer(head):
            if m.end() <= max_chars:
                cut = m.end()
        if cut < max_chars // 3:
            space = head.rstrip().rfind(" ")
            cut = space if space > 0 else (cut or max_chars)
        out.append(s[:cut].strip())
        s = s[cut:].strip()
    if s:
        out.append(s)
    return [p for p in out if p]


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split text into chunks of whole sentences, each at most `max_chars` long.

    Sentences end at . ! ? … (followed by whitespace), at 。！？ and at line breaks; consecutive
    sentences are packed into one chunk while it stays under the limit, and a single sentence over
    the limit is cut at a clause mark or space. Blank input gives []."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    pieces: list[str] = []
    for line in text.splitlines():
        for s in _sentences(line):
            pieces.extend(_split_long(s, max_chars) if len(s) > max_chars else [s])
    chunks: list[str] = []
    cur = ""
    for s in pieces:
        if not cur:
            cur = s
            continue
        sep = "" if _is_cjk(cur[-1]) or _is_cjk(s[0]) else " "
        if len(cur) + len(sep) + len(s) <= max_chars:
            cur += sep + s
        else:
            chunks.append(cur)
            cur = s
    if cur:
        chunks.append(cur)
    return chunks
