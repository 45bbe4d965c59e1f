"""Text arriving in pieces (dual-track streaming): only final tokens are committed, and once the text is
closed they are exactly the whole text's tokens, however it was cut."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import utter_tts.model.text_feed as text_feed
from utter_tts.model.checkpoint import open_checkpoint
from utter_tts.model.text_feed import TextFeed, final_ids

# Letters, digits, spaces, newlines, punctuation, contractions, CJK, combining marks (which NFC may
# reorder or compose with the letter before them) and Hangul jamo (which compose with each other).
ALPHABET = list("abeiouxyzAEI019 \n\t.,!?'-") + ["'s", "'ll", "你", "好", "。", "é"]
ALPHABET += ["\u0301", "\u0323", "\u1100", "\u1161", "\u11a8", "\uac00"]
TEXTS = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=24).map("".join)


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    return open_checkpoint(checkpoints("custom_voice", "tiny-1.7b"), weights=False).tokenizer


def _cuts(text: str, points: list[int]) -> list[str]:
    points = sorted({p % (len(text) + 1) for p in points})
    edges = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:])]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=TEXTS, points=st.lists(st.integers(0, 64), max_size=8))
# a mark that NFC composes with a letter of a pre-token before it: "b" + acute is a pre-token boundary,
# but a dot below arriving next makes the "b" a precomposed U+1E05
@example(text="b\u0301\u0323", points=[2])
def test_committed_tokens_are_final_and_at_close_the_whole_texts(tokenizer, text, points):
    whole = tokenizer.assistant_text(unicodedata.normalize("NFC", text))[1:-5]  # what a whole text gives
    feed, seen = TextFeed(tokenizer), []
    for piece in _cuts(text, points):
        feed.append(piece)
        ids, closed = feed.snapshot()
        assert not closed and ids == whole[: len(ids)], (piece, ids, whole)
        assert ids[: len(seen)] == seen  # never taken back
        seen = ids
    feed.close()
    assert feed.snapshot() == (whole, True)


def test_a_word_is_committed_once_the_next_one_begins(tokenizer):
    feed = TextFeed(tokenizer)
    feed.append("Hello wor")
    ids, _ = feed.snapshot()
    assert ids[2:] == tokenizer.encode_plain("Hello")  # " wor" may still become " world"
    feed.append("ld")
    assert feed.snapshot()[0] == ids
    feed.append(" ")
    assert feed.snapshot()[0][2:] == tokenizer.encode_plain("Hello world")


def test_committing_a_pre_token_before_it_ends_is_caught(tokenizer, monkeypatch):
    """The planted fault: every token committed at once (as if the last pre-token were complete)."""
    monkeypatch.setattr(text_feed, "final_ids", lambda tok, text, closed: final_ids(tok, text, True))
    feed = TextFeed(tokenizer)
    feed.append("Hel")
    with pytest.raises(AssertionError, match="committed text tokens changed"):
        feed.append("lo there")


def test_a_closed_feed_takes_no_more_text(tokenizer):
    from utter_tts.errors import InvalidInput

    feed = TextFeed(tokenizer, max_chars=10)
    with pytest.raises(InvalidInput, match="longer than 10"):
        feed.append("x" * 11)
    feed.append("Hi.")
    feed.close()
    with pytest.raises(InvalidInput, match="closed"):
        feed.append(" More.")
