"""Text into pieces the model speaks well: sentences, packed into chunks, or handed out as they arrive.

One rule everywhere (CLI, engine documents, server jobs and WebSocket, utter's routes): a sentence ends at
. ! ? ... (with closing quotes or brackets) before whitespace, at 。！？ anywhere, and at a line break. A
semicolon or colon is a clause mark, not a sentence end ("We came; we saw." is one sentence): a sentence
is cut at clause marks (, ; : ，、；：) only when it is longer than the chunk limit, else at a space.
"""

from __future__ import annotations

import re

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


def sentences(text: str, max_chars: int = 300) -> list[str]:
    """Every sentence of `text` in order, each cut to at most `max_chars` (see the module doc)."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    out: list[str] = []
    for line in text.splitlines():
        for s in _sentences(line):
            out.extend(_split_long(s, max_chars) if len(s) > max_chars else [s])
    return out


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split text into chunks of whole sentences, each at most `max_chars` long.

    Sentences end at . ! ? … (followed by whitespace), at 。！？ and at line breaks; consecutive
    sentences are packed into one chunk while it stays under the limit, and a single sentence over
    the limit is cut at a clause mark or space. Blank input gives []."""
    pieces = sentences(text, max_chars)
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


# Where finished sentences end in text still growing: a sentence end, or a line break.
_BOUNDARY = re.compile(_SENTENCE_END.pattern + r"|\n")


class SentenceBuffer:
    """Text as it arrives (e.g. from an LLM), handed out sentence by sentence once each is complete.

    A "." only ends a sentence once whitespace follows it ("3.5" and "e.g." may still be growing); text
    that grows past `max_chars` without a sentence end is cut at a clause mark or space."""

    def __init__(self, max_chars: int = 300):
        self.max_chars = max_chars
        self.pending = ""

    def feed(self, text: str) -> list[str]:
        """Add text; return the sentences it completed."""
        self.pending += text
        ends = list(_BOUNDARY.finditer(self.pending))
        done = ""
        if ends:
            cut = ends[-1].end()
            done, self.pending = self.pending[:cut], self.pending[cut:]
        out = sentences(done, self.max_chars)
        if len(self.pending) > self.max_chars:
            gap = self.pending[len(self.pending.rstrip()) :]  # a space before the next text stays
            *full, tail = _split_long(self.pending.strip(), self.max_chars)
            self.pending = tail + gap
            out += full
        return out

    def flush(self) -> list[str]:
        """The rest, however unfinished (the text has ended)."""
        rest, self.pending = self.pending, ""
        return sentences(rest, self.max_chars)


def live_cut(held: str, piece: str, soft: int, hard: int) -> int | None:
    """Where text arriving for a live generation moves on to the next one (a long dual-track session
    rolls over before its generation's frames run out): the index into `piece` after the first sentence
    end (or line break) that leaves the current text at least `soft` characters long; past `hard`
    characters without one, after the last space or clause mark within them (else at `hard` itself).
    None: all of `piece` stays with the current generation."""
    text = held + piece
    for end in _BOUNDARY.finditer(text, max(0, len(held) - 4)):  # a "." held may end with this space
        if end.end() > len(held) and end.end() >= soft:
            return end.end() - len(held)
    if len(text) <= hard:
        return None
    breaks = [m.end() for m in re.finditer(r"\s+|" + _CLAUSE_END.pattern, text[:hard])]
    cut = max([b for b in breaks if b > len(held)], default=max(hard, len(held)))
    return cut - len(held)
