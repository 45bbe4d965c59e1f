"""`utter-tts wyoming`: Home Assistant's local TTS protocol (Wyoming) over our models, streaming text too.

`describe` -> `info` lists the voices: each preset speaker of a CustomVoice model and each saved voice file
(`--voice NAME=FILE`, cloned with a Base model), with the models' languages. `synthesize` speaks a whole
text; `synthesize-start` / `synthesize-chunk` / `synthesize-stop` feed one dual-track generation as the
text arrives (audio from the first final words on), answered with `audio-start`, `audio-chunk`s (16-bit
mono PCM at 24 kHz), `audio-stop` and `synthesize-stopped`. The plain `synthesize` a streaming client
sends after its chunks (for older servers) is ignored inside a stream. Needs the `wyoming` package
(`pip install utter-tts[wyoming]`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("utter_tts.wyoming")

RATE, WIDTH, CHANNELS = 24000, 2, 1
ATTRIBUTION = ("Qwen3-TTS (utter-tts)", "https://huggingface.co/collections/Qwen/qwen3-tts")


@dataclass
class WyomingVoice:
    """One voice Home Assistant can pick: a preset speaker, or a saved (cloned) voice, on one model."""

    name: str
    tts: Any  # utter_tts.api.TTS
    speaker: str | None = None  # preset (CustomVoice)
    voice: Any = None  # utter_tts.Voice (Base)

    def request(self, text: str, language: str, seed: int | None):
        from utter_tts.request import Request

        if self.voice is not None:
            return Request(text, "clone", language, voice=self.voice, seed=seed)
        return Request(text, "speak", language, speaker=self.speaker, seed=seed)


def voices_of(models: list[Any], saved: dict[str, Path]) -> dict[str, WyomingVoice]:
    """Every preset speaker of the CustomVoice models and every saved voice (on the first Base model)."""
    from utter_tts.voices.voice import Voice

    out: dict[str, WyomingVoice] = {}
    for tts in models:
        if tts.model_type == "custom_voice":
            for speaker in tts.speakers:
                out.setdefault(speaker, WyomingVoice(speaker, tts, speaker=speaker))
    base = next((t for t in models if t.model_type == "base"), None)
    if saved and base is None:
        raise ValueError("--voice needs a Base model to speak saved voices")
    for name, path in saved.items():
        out[name] = WyomingVoice(name, base, voice=Voice.load(path))
    return out


def info_event(voices: dict[str, WyomingVoice]):
    from importlib import metadata

    from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

    try:
        version = metadata.version("utter-tts")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = None

    attribution = Attribution(*ATTRIBUTION)
    return Info(
        tts=[
            TtsProgram(
                name="utter-tts",
                attribution=attribution,
                installed=True,
                description="Qwen3-TTS: preset speakers and cloned voices, text streamed as it arrives",
                version=version,
                voices=[
                    TtsVoice(
                        name=v.name,
                        attribution=attribution,
                        installed=True,
                        description="saved voice" if v.voice is not None else "preset speaker",
                        version=None,
                        languages=[lang for lang in v.tts.languages if lang != "auto"],
                    )
                    for v in voices.values()
                ],
                supports_synthesize_streaming=True,
            )
        ]
    ).event()


def pcm16(chunk: np.ndarray) -> bytes:
    return (np.clip(np.asarray(chunk, np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class Handler:
    """One client connection: its events in order, its audio written as it is made."""

    def __init__(self, reader, writer, voices: dict[str, WyomingVoice], seed: int | None):
        from wyoming.server import AsyncEventHandler

        class _Events(AsyncEventHandler):
            async def handle_event(inner, event) -> bool:
                return await self.handle(event)

            async def disconnect(inner) -> None:
                self.close_stream()

        self.events = _Events(reader, writer)
        self.voices, self.seed = voices, seed
        self.writing = asyncio.Lock()
        self.feed = None  # the text feed of a streaming synthesis under way
        self.task: asyncio.Task | None = None

    async def write(self, event) -> None:
        async with self.writing:
            await self.events.write_event(event)

    def voice(self, requested) -> WyomingVoice:
        name = getattr(requested, "name", None) or getattr(requested, "speaker", None)
        if name is None:
            return next(iter(self.voices.values()))
        if name not in self.voices:
            raise ValueError(f"unknown voice {name!r}; voices: {', '.join(self.voices)}")
        return self.voices[name]

    async def handle(self, event) -> bool:
        from wyoming.error import Error
        from wyoming.info import Describe
        from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

        try:
            if Describe.is_type(event.type):
                await self.write(info_event(self.voices))
            elif SynthesizeStart.is_type(event.type):
                start = SynthesizeStart.from_event(event)
                voice = self.voice(start.voice)
                self.feed = voice.tts.text_feed()
                request = voice.request("", _language(start.voice), self.seed)
                chunks = voice.tts.stream(request, feed=self.feed)
                self.task = asyncio.create_task(self.speak(chunks, streaming=True))
            elif SynthesizeChunk.is_type(event.type):
                if self.feed is None:
                    raise ValueError("synthesize-chunk outside synthesize-start / synthesize-stop")
                self.feed.append(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(event.type):
                if self.feed is not None:
                    self.feed.close()
                    await self.task
                    self.feed = self.task = None
            elif Synthesize.is_type(event.type) and self.feed is None:  # inside a stream: the old-server copy
                synth = Synthesize.from_event(event)
                voice = self.voice(synth.voice)
                chunks = voice.tts.stream(voice.request(synth.text, _language(synth.voice), self.seed))
                await self.speak(chunks, streaming=False)
        except (
            Exception
        ) as e:  # the client's mistake or a failed generation: said, and the connection goes on
            log.warning("wyoming request failed: %s", e)
            await self.write(Error(text=str(e), code=type(e).__name__).event())
        return True

    async def speak(self, chunks: Iterator[np.ndarray], streaming: bool) -> None:
        """audio-start, the chunks as they come (generated on a worker thread), audio-stop."""
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.error import Error
        from wyoming.tts import SynthesizeStopped

        end = object()
        try:
            await self.write(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
            while (chunk := await asyncio.to_thread(next, chunks, end)) is not end:
                audio = pcm16(chunk)
                await self.write(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS, audio=audio).event())
            await self.write(AudioStop().event())
        except Exception as e:
            log.warning("wyoming synthesis failed: %s", e)
            await self.write(Error(text=str(e), code=type(e).__name__).event())
        finally:
            with contextlib.suppress(Exception):
                chunks.close()
        if streaming:
            await self.write(SynthesizeStopped().event())

    def close_stream(self) -> None:
        """The client left: end its text, so a generation waiting for more of it stops."""
        if self.feed is not None:
            self.feed.close()


def _language(voice) -> str:
    language = getattr(voice, "language", None)
    return language if language else "auto"


async def serve(uri: str, voices: dict[str, WyomingVoice], seed: int | None = None, ready=None) -> None:
    """Serve until cancelled; `ready` (an asyncio.Event) is set once the socket listens."""
    from wyoming.server import AsyncServer

    server = AsyncServer.from_uri(uri)
    await server.start(lambda reader, writer: Handler(reader, writer, voices, seed).events)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def parse_voice_files(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not Path(path).is_file():
            raise ValueError(f"--voice wants NAME=FILE with an existing voice file, got {item!r}")
        out[name.strip()] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="utter-tts wyoming", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="checkpoint folders or hub ids (CustomVoice, Base)")
    p.add_argument("--uri", default="tcp://127.0.0.1:10200", help="where to listen (default: %(default)s)")
    p.add_argument(
        "--voice",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a saved voice file (utter-tts voice create) offered as NAME (repeatable)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda (default: auto)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: auto)")
    p.add_argument("--seed", type=int, default=None, help="one seed for every synthesis (default: random)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import wyoming  # noqa: F401
    except ImportError:
        p.exit(
            2, "utter-tts wyoming: error: the wyoming package is missing: pip install 'utter-tts[wyoming]'\n"
        )
    try:
        saved = parse_voice_files(args.voice)
        from utter_tts.api import TTS

        models = [TTS.from_pretrained(m, device=args.device, dtype=args.dtype) for m in args.models]
        voices = voices_of(models, saved)
    except Exception as e:  # a bad flag or a model that cannot load: one line, status 2
        p.exit(2, f"utter-tts wyoming: error: {e}\n")
    if not voices:
        p.exit(
            2,
            "utter-tts wyoming: error: no voices: load a CustomVoice model or pass --voice with a Base one\n",
        )
    log.info("wyoming: %d voices on %s", len(voices), args.uri)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.uri, voices, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
