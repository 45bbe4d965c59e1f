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


TEMPLATE_IDS = 8  # a templated text's ids around the text itself: 3 role ids before, 5 closing ids after


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
    # the text is still arriving (dual-track): `text_ids` hold its final tokens so far, and no end token
    # follows them yet (the engine feeds the rest, then the end, as they come: model/text_feed.py)
    text_open: bool = False

    @property
    def text_tokens(self) -> int:
        """The tokens of the text to speak, as the prompt holds them (its body between the template's ids)."""
        return len(self.text_ids) - TEMPLATE_IDS

    @property
    def ref_codes(self) -> torch.Tensor | None:
        """An ICL voice's reference codes (as the voice holds them), else None."""
        return self.voice.ref_codes if self.voice.icl else None


def plan_prompt(
    cfg: TTSConfig,
    text_ids: list[int],
    language: str,
    voice: VoiceSpec,
    non_streaming_mode: bool,
    text_open: bool = False,
) -> PromptPlan:
    """Check a prompt (empty text, language) and count its rows, without a tensor op: the layout of
    `make_prompt`, counted (tests/model/test_prompt.py holds the two together for every mode).
    text_ids: the templated assistant ids: 3 role ids, the text, then 5 closing ids. `text_open`: the text
    so far of one still arriving (streaming-text mode only; its prompt needs `open_text_missing` == 0)."""
    if text_open and non_streaming_mode:
        raise InvalidInput("text still arriving needs streaming-text mode", param="non_streaming_mode")
    if len(text_ids) <= TEMPLATE_IDS and not text_open:
        raise InvalidInput("text is empty", param="text", code="invalid_text")
    lid = language_id(cfg, language, voice.speaker)
    body = len(text_ids) - TEMPLATE_IDS
    # the codec prefix: think ids (3, 4 with a language), the speaker (x-vector or preset), pad, bos
    codec = (3 if lid is None else 4) + (1 if voice.speaker_embedding is not None or voice.speaker else 0) + 2
    # [the instruction turn], the role (3), the codec prefix but its bos (overlaid on tts_pad ... tts_bos)
    rows = len(voice.instruct_ids or ()) + 3 + (codec - 1)
    if voice.icl:
        # transcript + text + eos (not yet while the text is open), against bos + the reference's frames
        text, codes = len(voice.ref_text_ids) + body + (0 if text_open else 1), 1 + voice.ref_codes.shape[0]
        if non_streaming_mode:
            rows, text_rows = rows + text + codes, 1
        else:
            rows, text_rows = rows + codes, text - codes if text > codes or text_open else 1
    elif non_streaming_mode:
        rows, text_rows = rows + body + 1 + 1, 1  # text + eos, then pad + bos; tts_pad fed after
    else:  # the first token with bos; the rest + eos fed one a frame
        rows, text_rows = rows + 1, max(0, body - 1) if text_open else body
    return PromptPlan(text_ids, lid, voice, non_streaming_mode, rows, text_rows, text_open)


def open_text_missing(plan: PromptPlan) -> int:
    """How many more final text tokens an open plan's prompt needs before it can be made: the first (on
    the codec's bos), or, for an ICL voice, as many as fill the rows beside its reference frames."""
    body = len(plan.text_ids) - TEMPLATE_IDS
    if plan.voice.icl:
        return max(0, 1 + plan.voice.ref_codes.shape[0] - len(plan.voice.ref_text_ids) - body)
    return max(0, 1 - body)


def trailing_ids(cfg: TTSConfig, plan: PromptPlan) -> list[int]:
    """The text ids a plan's frames are fed one by one (its prompt's `trailing`), then tts_pad."""
    return _layout(cfg, plan)[2]


# What a prompt row adds to its text embedding, besides codec ids (>= 0): nothing, the voice's x-vector, or
# frame j of an ICL voice's reference codes (REF - j)
NO_CODEC, SPEAKER, REF = -1, -2, -3


def _layout(cfg: TTSConfig, plan: PromptPlan) -> tuple[list[int], list[int], list[int]]:
    """A planned prompt as ids, row by row: (the text id of each prompt row, what each row adds to it: a
    codec id, NO_CODEC, SPEAKER or REF - j, the text ids fed later one per frame). Every row's embedding
    is its text embedding plus its codec part (`make_prompts`)."""
    t = cfg.talker
    text_ids, lid, voice = plan.text_ids, plan.language_id, plan.voice
    bos, eos, pad = cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id
    body = list(text_ids[3:-5])
    if lid is None:
        codec = [t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id]
    else:
        codec = [t.codec_think_id, t.codec_think_bos_id, lid, t.codec_think_eos_id]
    if voice.speaker_embedding is not None:
        codec.append(SPEAKER)
    elif voice.speaker:
        codec.append(t.spk_id[voice.speaker.lower()])
    codec += [t.codec_pad_id, t.codec_bos_id]
    instruct = list(voice.instruct_ids or ())
    # [the instruction turn], the role, then the codec prefix but its bos on tts_pad ... tts_bos
    text = instruct + list(text_ids[:3]) + [pad] * (len(codec) - 2) + [bos]
    adds = [NO_CODEC] * (len(instruct) + 3) + codec[:-1]
    end = [] if plan.text_open else [eos]  # an open text's end comes when it is closed
    if voice.icl:
        spoken = list(voice.ref_text_ids) + body + end  # transcript + text + eos
        codes = [t.codec_bos_id] + [REF - j for j in range(voice.ref_codes.shape[0])]
        if plan.non_streaming_mode:
            text += spoken + [pad] * len(codes)
            adds += [t.codec_pad_id] * len(spoken) + codes
            trailing = [pad]
        elif len(spoken) > len(codes) or plan.text_open:
            text += spoken[: len(codes)]
            adds += codes
            trailing = spoken[len(codes) :]
        else:
            text += spoken + [pad] * (len(codes) - len(spoken))
            adds += codes
            trailing = [pad]
    elif plan.non_streaming_mode:
        text += body + [eos, pad]  # text + eos on codec_pad, then tts_pad on the codec's bos
        adds += [t.codec_pad_id] * (len(body) + 1) + [t.codec_bos_id]
        trailing = [pad]
    else:
        text += body[:1]  # the first token on the codec's bos; the rest + eos fed one a frame
        adds += [t.codec_bos_id]
        trailing = body[1:] + end
    return text, adds, trailing


@torch.no_grad()
def make_prompts(talker: Talker, cfg: TTSConfig, plans: list[PromptPlan]) -> list[Prompt]:
    """Planned prompts' embeddings, all in one pass (on the current stream of the talker's device): every
    text id of every prompt through one text projection, every codec part gathered from one table, one
    add. Per prompt, each op would launch again: 64 prompts made one by one took ~60 ms of an admission
    on an H200, for kernels of a few microseconds. Each prompt's tensors are views of the batch's."""
    dev = talker.codec_head.weight.device
    layouts = [_layout(cfg, plan) for plan in plans]
    text_ids, adds, trailing_ids = [], [], []
    for text, add, trailing in layouts:
        text_ids += text
        adds += add
        trailing_ids += trailing
    rows = len(text_ids)
    # the codec table: the codec ids the rows add, then x-vectors, reference frames and a zero row
    codec_ids = [a for a in adds if a >= 0]
    speakers = [p.voice.speaker_embedding for p in plans if p.voice.speaker_embedding is not None]
    refs = [p.voice.ref_codes for p in plans if p.voice.icl]
    n_ref = sum(r.shape[0] for r in refs)
    zero = len(codec_ids) + len(speakers) + n_ref
    index, k, s, r = [], 0, len(codec_ids), len(codec_ids) + len(speakers)
    for plan, (_, add, _) in zip(plans, layouts):
        for a in add:
            if a >= 0:
                index.append(k)
                k += 1
            elif a == NO_CODEC:
                index.append(zero)
            elif a == SPEAKER:
                index.append(s)
            else:
                index.append(r + REF - a)
        s += plan.voice.speaker_embedding is not None
        r += plan.voice.ref_codes.shape[0] if plan.voice.icl else 0
    # every id and index in one host-to-device copy
    host = [text_ids + trailing_ids + [cfg.tts_pad_token_id], codec_ids, index]
    if refs:
        host.append(torch.cat(refs).view(-1).tolist())
    parts = to_device([x for h in host for x in h], torch.long, dev).split([len(h) for h in host])
    text_e = talker.text_embed(parts[0])
    table = [talker.codec_embed(parts[1])]
    if speakers:
        table.append(to_device(torch.stack([e.reshape(-1) for e in speakers]), text_e.dtype, dev))
    if refs:
        table.append(talker.frame_embed(parts[3].view(n_ref, -1)))
    table.append(text_e.new_zeros(1, text_e.shape[1]))
    embeds = text_e[:rows] + torch.cat(table)[parts[2]]
    pad_e = text_e[-1]
    out, row, fed = [], 0, rows
    for text, _, trailing in layouts:
        out.append(Prompt(embeds[row : row + len(text)], text_e[fed : fed + len(trailing)], pad_e))
        row += len(text)
        fed += len(trailing)
    return out


def make_prompt(talker: Talker, cfg: TTSConfig, plan: PromptPlan) -> Prompt:
    """One planned prompt's embeddings (`make_prompts`)."""
    return make_prompts(talker, cfg, [plan])[0]
