"""Prompt building: turn text, language and voice (clone / design / preset) into talker input embeddings.

Mirrors the official `Qwen3TTSForConditionalGeneration.generate` layout: an optional instruction turn,
the assistant role, a codec prefix (think / language / speaker / pad / bos) overlaid on tts_pad and
tts_bos text embeddings, then the text, either fed one token per frame ("streaming" text) or placed
entirely in the prompt ("non-streaming"); ICL clones also place the reference transcript and codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utter_tts.device import to_device
from utter_tts.errors import InvalidInput
from utter_tts.model.config import TTSConfig
from utter_tts.model.talker import Talker


@dataclass
class VoiceSpec:
    """The voice part of a request, already resolved to tensors and ids."""

    speaker_embedding: torch.Tensor | None = None  # clone: x-vector [H]
    ref_codes: torch.Tensor | None = None  # ICL clone: [F, 16]
    ref_text_ids: list[int] | None = None  # ICL clone: ids of the reference transcript (without template)
    speaker: str | None = None  # preset speaker (custom_voice)
    instruct_ids: list[int] | None = None  # templated ids of a description / style instruction

    @property
    def icl(self) -> bool:
        """A clone from a reference clip with its transcript (its codes go into the prompt)."""
        return self.ref_codes is not None and bool(self.ref_text_ids)


@dataclass
class Prompt:
    embeds: torch.Tensor  # [L, H] prefill embeddings
    trailing: torch.Tensor  # [Lt, H] text embeddings added one per decode step, then tts_pad
    pad_embed: torch.Tensor  # [H] tts_pad embedding


def language_id(cfg: TTSConfig, language: str, speaker: str | None) -> int | None:
    lang = language.lower()
    talker = cfg.talker
    if lang == "auto":
        lid = None
    elif lang in talker.codec_language_id and "dialect" not in lang:
        lid = talker.codec_language_id[lang]
    else:
        raise InvalidInput(
            f"unsupported language {language!r}; supported: {', '.join(cfg.languages)}",
            param="language",
            code="unsupported_language",
        )
    # preset speakers with a dialect speak it when the language is Chinese or auto (official rule)
    if speaker and lang in ("chinese", "auto"):
        dialect = talker.spk_is_dialect.get(speaker.lower(), False)
        if dialect:
            lid = talker.codec_language_id[dialect]
    return lid


@dataclass
class PromptPlan:
    """A prompt checked and laid out on the host, before any embedding is made: what `make_prompt` needs,
    and the sizes an engine checks at submit time (`rows` prefill positions, `text_rows` fed later)."""

    text_ids: list[int]  # the templated assistant ids (TextTokenizer.assistant_text)
    language_id: int | None  # the codec's language id (None: auto)
    voice: VoiceSpec
    non_streaming_mode: bool
    rows: int
    text_rows: int

    @property
    def ref_codes(self) -> torch.Tensor | None:
        """An ICL voice's reference codes (as the voice holds them), else None."""
        return self.voice.ref_codes if self.voice.icl else None


def plan_prompt(
    cfg: TTSConfig, text_ids: list[int], language: str, voice: VoiceSpec, non_streaming_mode: bool
) -> PromptPlan:
    """Check a prompt (empty text, language) and count its rows, without a tensor op: the layout of
    `make_prompt`, counted (tests/model/test_prompt.py holds the two together for every mode).
    text_ids: the templated assistant ids: 3 role ids, the text, then 5 closing ids."""
    if len(text_ids) <= 8:
        raise InvalidInput("text is empty", param="text", code="invalid_text")
    lid = language_id(cfg, language, voice.speaker)
    body = len(text_ids) - 8
    # the codec prefix: think ids (3, 4 with a language), the speaker (x-vector or preset), pad, bos
    codec = (3 if lid is None else 4) + (1 if voice.speaker_embedding is not None or voice.speaker else 0) + 2
    # [the instruction turn], the role (3), the codec prefix but its bos (overlaid on tts_pad ... tts_bos)
    rows = len(voice.instruct_ids or ()) + 3 + (codec - 1)
    if voice.icl:
        # transcript + text + eos, against bos + the reference's frames
        text, codes = len(voice.ref_text_ids) + body + 1, 1 + voice.ref_codes.shape[0]
        if non_streaming_mode:
            rows, text_rows = rows + text + codes, 1
        else:
            rows, text_rows = rows + codes, text - codes if text > codes else 1
    elif non_streaming_mode:
        rows, text_rows = rows + body + 1 + 1, 1  # text + eos, then pad + bos; tts_pad fed after
    else:
        rows, text_rows = rows + 1, body  # the first token with bos; the rest + eos fed one a frame
    return PromptPlan(text_ids, lid, voice, non_streaming_mode, rows, text_rows)


@torch.no_grad()
def make_prompt(talker: Talker, cfg: TTSConfig, plan: PromptPlan) -> Prompt:
    """A planned prompt's embeddings (on the current stream of the talker's device)."""
    t = cfg.talker
    dev = talker.codec_head.weight.device
    text_ids, lid, voice = plan.text_ids, plan.language_id, plan.voice
    non_streaming_mode = plan.non_streaming_mode

    def ids(x):  # no wait on the stream (`to_device`)
        return to_device(x, torch.long, dev)

    def text_const(x):  # template ids every prompt shares: embedded once per talker
        return talker.constant_embed("text", tuple(x))

    def codec_const(x):
        return talker.constant_embed("codec", tuple(x))

    body = ids(text_ids[3:-5])
    bos_e, eos_e, pad_e = text_const([cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id])

    if lid is None:
        prefix = [t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id]
    else:
        prefix = [t.codec_think_id, t.codec_think_bos_id, lid, t.codec_think_eos_id]
    codec = [codec_const(prefix)]
    if voice.speaker_embedding is not None:
        codec.append(to_device(voice.speaker_embedding, pad_e.dtype, dev).view(1, -1))
    elif voice.speaker:
        codec.append(codec_const([t.spk_id[voice.speaker.lower()]]))
    codec.append(codec_const([t.codec_pad_id, t.codec_bos_id]))
    codec = torch.cat(codec)
    n = codec.shape[0]

    # the codec prefix (all but its final bos) sits on tts_pad ... tts_bos text embeddings
    overlay = torch.cat([pad_e.expand(n - 2, -1), bos_e[None]]) + codec[:-1]
    parts = []
    if voice.instruct_ids:
        parts.append(talker.text_embed(ids(voice.instruct_ids)))
    parts += [text_const(text_ids[:3]), overlay]

    if voice.icl:
        ref_codes = to_device(voice.ref_codes, torch.long, dev)
        text_e = torch.cat([talker.text_embed(torch.cat([ids(voice.ref_text_ids), body])), eos_e[None]])
        codes_e = torch.cat([codec_const([t.codec_bos_id]), talker.frame_embed(ref_codes)])
        if non_streaming_mode:
            icl = text_e + codec_const([t.codec_pad_id]).expand(text_e.shape[0], -1)
            parts += [icl, codes_e + pad_e]
            trailing = pad_e[None]
        elif text_e.shape[0] > codes_e.shape[0]:
            parts.append(text_e[: codes_e.shape[0]] + codes_e)
            trailing = text_e[codes_e.shape[0] :]
        else:
            fill = pad_e.expand(codes_e.shape[0] - text_e.shape[0], -1)
            parts.append(torch.cat([text_e, fill]) + codes_e)
            trailing = pad_e[None]
        return Prompt(torch.cat(parts), trailing, pad_e)

    if non_streaming_mode:
        all_text = torch.cat([talker.text_embed(body), eos_e[None]])
        parts.append(all_text + codec_const([t.codec_pad_id]).expand(all_text.shape[0], -1))
        parts.append(pad_e[None] + codec_const([t.codec_bos_id]))
        trailing = pad_e[None]
    else:
        parts.append(talker.text_embed(body[:1]) + codec[-1:])
        trailing = torch.cat([talker.text_embed(body[1:]), eos_e[None]])
    return Prompt(torch.cat(parts), trailing, pad_e)
