"""Text tokenization with the checkpoint's own Qwen2 BPE; user text never becomes control tokens."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# The Qwen2 pre-tokenizer split (the same regex the official fast tokenizer uses).
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501


class TextTokenizer:
    """Byte-level BPE over vocab.json + merges.txt.

    The BPE has no added tokens at all, so a user text containing "<|im_end|>" is encoded as the
    bytes it is. Control tokens are inserted by id, and the template is split where the official
    tokenizer splits it (at its special tokens), so ordinary text gives the official ids exactly.
    """

    def __init__(self, folder: str | Path, im_start_id: int, im_end_id: int):
        folder = Path(folder)
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        if not vocab.is_file() or not merges.is_file():
            raise FileNotFoundError(f"tokenizer files vocab.json / merges.txt missing in {folder}")
        bpe = Tokenizer(models.BPE.from_file(str(vocab), str(merges), unk_token=None, fuse_unk=False))
        bpe.normalizer = normalizers.NFC()
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        bpe.decoder = decoders.ByteLevel()
        self.bpe = bpe
        self.im_start_id = im_start_id
        self.im_end_id = im_end_id
        with open(vocab, encoding="utf-8") as f:
            self.vocab_size = len(json.load(f))
        self._pieces: dict[str, tuple[int, ...]] = {}

    def _piece(self, text: str) -> tuple[int, ...]:
        """Ids of a template piece every prompt has (encoded once: half a prompt's encodes were these)."""
        ids = self._pieces.get(text)
        if ids is None:
            ids = self._pieces[text] = tuple(self.encode_plain(text))
        return ids

    def encode_plain(self, text: str) -> list[int]:
        return self.bpe.encode(text, add_special_tokens=False).ids

    def _turn(self, role: str, text: str) -> list[int]:
        # "<|im_start|>{role}\n{text}<|im_end|>\n": the official tokenizer sees "{role}\n{text}" as one
        # segment between special tokens, then "\n".
        return [
            self.im_start_id,
            *self.encode_plain(f"{role}\n{text}"),
            self.im_end_id,
            *self._piece("\n"),
        ]

    def assistant_text(self, text: str) -> list[int]:
        """Ids of the text to speak: its turn, then the opening of the next assistant turn."""
        return self._turn("assistant", text) + [self.im_start_id, *self._piece("assistant\n")]

    def ref_text(self, text: str) -> list[int]:
        """Ids of a reference transcript (ICL clone prompt)."""
        return self._turn("assistant", text)

    def instruct_text(self, text: str) -> list[int]:
        """Ids of a voice description or style instruction."""
        return self._turn("user", text)
