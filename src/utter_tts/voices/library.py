"""Persistent voice library: SQLite (WAL) metadata plus one safetensors file per voice, owned by API keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from utter_tts.errors import InvalidInput
from utter_tts.voices.cache import VoiceCache
from utter_tts.voices.voice import Voice

VOICE_ID_RE = re.compile(r"^voice_[0-9a-f]{24}$")
MAX_NAME_CHARS = 64
ANONYMOUS_OWNER = "anonymous"
# Files with no row that are younger than this may belong to an upload in flight in another process
# (file written, row not yet committed), so startup cleanup leaves them alone.
ORPHAN_GRACE_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    name         TEXT NOT NULL,
    source       TEXT NOT NULL,
    mode         TEXT NOT NULL,
    ref_text     TEXT,
    content_hash TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    meta         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS voices_by_owner ON voices (owner, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS voices_owner_name ON voices (owner, name);
"""


class VoiceNotFound(InvalidInput):
    """No voice with this id (or name) is visible to the caller; foreign voices look the same."""

    code = "voice_not_found"


class VoiceNameTaken(InvalidInput):
    """The caller already has a voice with this name."""

    code = "voice_name_taken"


class VoiceLimitReached(InvalidInput):
    """The caller owns as many voices as the server allows."""

    code = "voice_limit_reached"


class VoiceFileCorrupt(RuntimeError):
    """A stored voice file that no longer parses (disk damage or outside edits)."""


def owner_for_key(api_key: str | None) -> str:
    """The owner id stored for an API key: a salted SHA-256, so the database never holds a usable key."""
    if api_key is None:
        return ANONYMOUS_OWNER
    return hashlib.sha256(b"utter-tts-owner\0" + api_key.encode("utf-8")).hexdigest()


def check_voice_id(voice_id: Any, param: str = "voice_id") -> str:
    """Accept only ids this library mints (`voice_` + 24 hex), which rules out any path trick."""
    if not isinstance(voice_id, str) or not VOICE_ID_RE.match(voice_id):
        raise VoiceNotFound(f"no such voice: {str(voice_id)[:80]!r}", param=param)
    return voice_id


def check_voice_name(name: Any, param: str = "name") -> str:
    """Names are display labels: 1-64 printable characters, trimmed, no control characters."""
    if not isinstance(name, str):
        raise InvalidInput("name must be a string", param=param, code="invalid_name")
    name = unicodedata.normalize("NFC", name).strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"name must be 1 to {MAX_NAME_CHARS} characters", param=param, code="invalid_name")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidInput("name must not contain control characters", param=param, code="invalid_name")
    return name


@dataclass
class VoiceRecord:
    """One saved voice as listed to its owner."""

    id: str
    name: str
    source: str  # "upload" | "design"
    mode: str  # "icl" | "xvector"
    ref_text: str | None
    content_hash: str
    bytes: int
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The JSON shape the HTTP API returns (OpenAI-style `object` and integer `created_at`)."""
        d = asdict(self)
        d["object"] = "voice"
        d["created_at"] = int(self.created_at)
        del d["bytes"]
        return d


class VoiceLibrary:
    """Voices in a data directory: `voices.db` (SQLite, WAL) and `voices/<id>.safetensors`.

    Every write puts the tensor file in place first (atomically) and only then commits the row, so a
    crash at any point leaves either a complete voice or an orphan file that no row points to; orphans
    are removed at startup once they are older than ORPHAN_GRACE_S. Several processes may share one
    directory: SQLite serialises their writes and each reads the others' commits.
    """

    def __init__(self, data_dir: str | os.PathLike, max_voices_per_owner: int = 1000, cache_size: int = 64):
        self.data_dir = Path(data_dir)
        self.voice_dir = self.data_dir / "voices"
        # private: voices are biometric data (files inside get the usual mode; the folder guards them)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.voice_dir.mkdir(mode=0o700, exist_ok=True)
        self.db_path = self.data_dir / "voices.db"
        self.max_voices_per_owner = max_voices_per_owner
        self._cache = VoiceCache(cache_size)  # loaded voices by (owner, content hash)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        self.remove_orphans()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: cheap for SQLite, safe from any thread, and it always sees the
        # latest commits of other processes.
        db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def _file(self, voice_id: str) -> Path:
        return self.voice_dir / f"{check_voice_id(voice_id)}.safetensors"

    def create(
        self,
        owner: str,
        voice: Voice,
        name: str,
        source: str = "upload",
        meta: dict[str, Any] | None = None,
    ) -> VoiceRecord:
        """Store a voice for `owner`; returns its record with a fresh id."""
        name = check_voice_name(name)
        voice_id = "voice_" + secrets.token_hex(12)
        data = voice.to_bytes()
        record = VoiceRecord(
            id=voice_id,
            name=name,
            source=source,
            mode=voice.mode,
            ref_text=voice.ref_text,
            content_hash=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            created_at=time.time(),
            meta=dict(meta or {}),
        )
        with self._connect() as db:
            # Cheap early checks before writing the file; repeated inside the transaction below.
            self._check_can_add(db, owner, name)
        path = self._file(voice_id)
        voice.save(path)  # durable: the file is on disk before the row that points to it
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._check_can_add(db, owner, name)
                    db.execute(
                        "INSERT INTO voices (id, owner, name, source, mode, ref_text, content_hash, bytes,"
                        " created_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record.id,
                            owner,
                            record.name,
                            record.source,
                            record.mode,
                            record.ref_text,
                            record.content_hash,
                            record.bytes,
                            record.created_at,
                            json.dumps(record.meta),
                        ),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return record

    def _check_can_add(self, db: sqlite3.Connection, owner: str, name: str) -> None:
        (count,) = db.execute("SELECT COUNT(*) FROM voices WHERE owner = ?", (owner,)).fetchone()
        if count >= self.max_voices_per_owner:
            raise VoiceLimitReached(
                f"voice limit reached ({self.max_voices_per_owner}); delete a voice first", param=None
            )
        if db.execute("SELECT 1 FROM voices WHERE owner = ? AND name = ?", (owner, name)).fetchone():
            raise VoiceNameTaken(f"you already have a voice named {name!r}", param="name")

    def list(self, owner: str) -> list[VoiceRecord]:
        """The owner's voices, newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM voices WHERE owner = ? ORDER BY created_at DESC, id", (owner,)
            ).fetchall()
            cols = [c[0] for c in db.execute("SELECT * FROM voices LIMIT 0").description]
        return [_record(dict(zip(cols, row))) for row in rows]

    def get(self, owner: str, voice_id: str, param: str = "voice_id") -> VoiceRecord:
        """The record of one of the owner's voices; anyone else's id is reported as not found."""
        check_voice_id(voice_id, param)
        with self._connect() as db:
            cur = db.execute("SELECT * FROM voices WHERE id = ? AND owner = ?", (voice_id, owner))
            row = cur.fetchone()
            cols = [c[0] for c in cur.description]
        if row is None:
            raise VoiceNotFound(f"no such voice: {voice_id!r}", param=param)
        return _record(dict(zip(cols, row)))

    def find(self, owner: str, id_or_name: str, param: str = "voice") -> VoiceRecord | None:
        """Resolve a voice id, or else a name, among the owner's voices; None when neither matches."""
        if VOICE_ID_RE.match(id_or_name):
            try:
                return self.get(owner, id_or_name, param)
            except VoiceNotFound:
                return None
        with self._connect() as db:
            cur = db.execute("SELECT * FROM voices WHERE owner = ? AND name = ?", (owner, id_or_name.strip()))
            row = cur.fetchone()
            cols = [c[0] for c in cur.description]
        return None if row is None else _record(dict(zip(cols, row)))

    def load(self, owner: str, voice_id: str, param: str = "voice") -> Voice:
        """The owner's voice tensors, from a small LRU cache keyed by (owner, content hash)."""
        record = self.get(owner, voice_id, param)
        return self.load_record(owner, record, param)

    def load_record(self, owner: str, record: VoiceRecord, param: str = "voice") -> Voice:
        """Load the tensors for a record already fetched for `owner`."""
        key = (owner, record.content_hash)
        voice = self._cache.get(key)
        if voice is not None:
            return voice
        try:
            voice = Voice.load(self._file(record.id))
        except FileNotFoundError as e:
            # Deleted by another process between our row read and the file read.
            raise VoiceNotFound(f"no such voice: {record.id!r}", param=param) from e
        except InvalidInput as e:
            # Files are written atomically, so this is damage from outside: a server fault, not the caller's.
            raise VoiceFileCorrupt(f"voice file of {record.id} is unreadable: {e}") from e
        self._cache.put(key, voice)
        return voice

    def delete(self, owner: str, voice_id: str, param: str = "voice_id") -> VoiceRecord:
        """Remove one of the owner's voices: the row first (the commit point), then its file."""
        record = self.get(owner, voice_id, param)
        with self._connect() as db:
            cur = db.execute("DELETE FROM voices WHERE id = ? AND owner = ?", (voice_id, owner))
            if cur.rowcount == 0:
                raise VoiceNotFound(f"no such voice: {voice_id!r}", param=param)
        self._file(voice_id).unlink(missing_ok=True)
        self._cache.pop((owner, record.content_hash))
        return record

    def count(self, owner: str | None = None) -> int:
        """Number of voices of one owner, or of everyone."""
        with self._connect() as db:
            if owner is None:
                return db.execute("SELECT COUNT(*) FROM voices").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM voices WHERE owner = ?", (owner,)).fetchone()[0]

    def remove_orphans(self, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
        """Delete voice files and temp files no row points to, once older than `grace_s`."""
        with self._connect() as db:
            known = {row[0] for row in db.execute("SELECT id FROM voices")}
        removed = []
        now = time.time()
        for path in self.voice_dir.iterdir():
            voice_id = path.name.removesuffix(".safetensors")
            if voice_id in known and path.suffix == ".safetensors":
                continue
            try:
                if now - path.stat().st_mtime < grace_s or not path.is_file():
                    continue
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                continue
        return removed


def _record(row: dict[str, Any]) -> VoiceRecord:
    row = dict(row)
    row.pop("owner", None)
    row["meta"] = json.loads(row.get("meta") or "{}")
    return VoiceRecord(**row)
