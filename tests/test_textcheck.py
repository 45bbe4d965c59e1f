"""The text check's rule for text that arrives in pieces: the same verdict as for the whole text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from utter_tts.errors import InvalidInput
from utter_tts.textcheck import _MARKUP, check_appended

PIECES = st.lists(
    st.one_of(
        st.text(alphabet="ab <|>_tsimend", max_size=12),
        st.sampled_from(["<|", "im_end", "|>", "<tts_", "pad>", "<|endoftext|>", "<TTS_BOS>"]),
    ),
    max_size=8,
)


@given(PIECES)
def test_pieces_are_refused_exactly_where_the_whole_text_would_first_contain_markup(pieces):
    """Appending piece by piece (a refused piece is dropped, as the WebSocket does): every kept text is
    free of special-token strings, and a piece is refused only if keeping it would have made one."""
    text = ""
    for piece in pieces:
        try:
            check_appended(text, piece, "text")
        except InvalidInput as e:
            assert e.param == "text" and e.code == "special_token"
            assert _MARKUP.search(text + piece)
            continue
        text += piece
        assert not _MARKUP.search(text)
