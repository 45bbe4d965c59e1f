"""Voice library on real SQLite and real processes: ownership, id safety, restarts, kill -9, sharing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from utter_tts.errors import InvalidInput
from utter_tts.voices.library import (
    VoiceLibrary,
    VoiceLimitReached,
    VoiceNameTaken,
    VoiceNotFound,
    owner_for_key,
)
from utter_tts.voices.voice import Voice

ALICE = owner_for_key("sk-alice")
BOB = owner_for_key("sk-bob")


def make_voice(seed: int = 0, icl: bool = True) -> Voice:
    g = torch.Generator().manual_seed(seed)
    return Voice(
        speaker_embedding=torch.randn(64, generator=g),
        ref_codes=torch.randint(0, 2048, (30, 16), generator=g) if icl else None,
        ref_text="hello there" if icl else None,
    )


def test_create_list_get_load_delete(tmp_path):
    lib = VoiceLibrary(tmp_path)
    rec = lib.create(ALICE, make_voice(1), name="Narrator", meta={"duration_s": 3.2})
    assert rec.id.startswith("voice_") and rec.mode == "icl" and rec.source == "upload"
    assert [r.id for r in lib.list(ALICE)] == [rec.id]
    assert lib.get(ALICE, rec.id).meta == {"duration_s": 3.2}
    loaded = lib.load(ALICE, rec.id)
    assert torch.equal(loaded.speaker_embedding, make_voice(1).speaker_embedding)
    assert loaded.ref_text == "hello there"
    assert lib.find(ALICE, "Narrator").id == rec.id
    assert lib.find(ALICE, rec.id).id == rec.id
    lib.delete(ALICE, rec.id)
    assert lib.list(ALICE) == []
    assert not list((tmp_path / "voices").iterdir())
    with pytest.raises(VoiceNotFound):
        lib.get(ALICE, rec.id)


def test_public_shape_has_no_owner_or_key(tmp_path):
    lib = VoiceLibrary(tmp_path)
    pub = lib.create(ALICE, make_voice(), name="a").public()
    assert pub["object"] == "voice" and isinstance(pub["created_at"], int)
    assert "owner" not in pub and ALICE not in str(pub)


def test_raw_keys_are_never_stored(tmp_path):
    lib = VoiceLibrary(tmp_path)
    lib.create(owner_for_key("sk-very-secret-key"), make_voice(), name="x")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"sk-very-secret-key" not in path.read_bytes()


def test_voices_are_invisible_to_other_keys(tmp_path):
    lib = VoiceLibrary(tmp_path)
    rec = lib.create(ALICE, make_voice(), name="mine")
    assert lib.list(BOB) == []
    assert lib.find(BOB, rec.id) is None and lib.find(BOB, "mine") is None
    for op in (lib.get, lib.load, lib.delete):
        with pytest.raises(VoiceNotFound):
            op(BOB, rec.id)
    assert lib.count(ALICE) == 1
    # same name is fine for another owner
    lib.create(BOB, make_voice(), name="mine")


@pytest.mark.parametrize(
    "bad_id",
    [
        "../voices.db",
        "voice_../../etc/passwd",
        "/etc/passwd",
        "voice_" + "0" * 23,
        "voice_" + "g" * 24,
        "VOICE_" + "0" * 24,
        "voice_" + "0" * 24 + "/x",
        "voice_" + "0" * 24 + "\n",
        "",
        None,
        42,
    ],
)
def test_bad_ids_are_rejected_before_touching_disk(tmp_path, bad_id):
    lib = VoiceLibrary(tmp_path)
    for op in (lib.get, lib.load, lib.delete):
        with pytest.raises(VoiceNotFound) as e:
            op(ALICE, bad_id)
        assert e.value.code == "voice_not_found"


@pytest.mark.parametrize("bad_name", ["", "   ", "x" * 65, "a\nb", "tab\there", "\x00", 7])
def test_bad_names(tmp_path, bad_name):
    lib = VoiceLibrary(tmp_path)
    with pytest.raises(InvalidInput) as e:
        lib.create(ALICE, make_voice(), name=bad_name)
    assert e.value.param == "name" and e.value.code == "invalid_name"
    assert lib.count() == 0 and not list((tmp_path / "voices").iterdir())


def test_duplicate_name_and_limit_leave_nothing_behind(tmp_path):
    lib = VoiceLibrary(tmp_path, max_voices_per_owner=2)
    lib.create(ALICE, make_voice(), name="one")
    with pytest.raises(VoiceNameTaken):
        lib.create(ALICE, make_voice(), name="one")
    lib.create(ALICE, make_voice(), name="two")
    with pytest.raises(VoiceLimitReached):
        lib.create(ALICE, make_voice(), name="three")
    assert lib.count(ALICE) == 2 and len(list((tmp_path / "voices").iterdir())) == 2


def test_survives_restart(tmp_path):
    lib = VoiceLibrary(tmp_path)
    ids = [lib.create(ALICE, make_voice(i), name=f"v{i}").id for i in range(3)]
    del lib
    lib2 = VoiceLibrary(tmp_path)
    assert sorted(r.id for r in lib2.list(ALICE)) == sorted(ids)
    for i, vid in enumerate(ids):
        assert torch.equal(lib2.load(ALICE, vid).ref_codes, make_voice(i).ref_codes)


def test_wal_mode(tmp_path):
    import sqlite3

    VoiceLibrary(tmp_path)
    assert sqlite3.connect(tmp_path / "voices.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_orphans_are_cleaned_only_after_grace(tmp_path):
    lib = VoiceLibrary(tmp_path)
    keep = lib.create(ALICE, make_voice(), name="keep")
    orphan = tmp_path / "voices" / ("voice_" + "a" * 24 + ".safetensors")
    make_voice().save(orphan)
    torn = tmp_path / "voices" / ".tmp-abc.safetensors"
    torn.write_bytes(b"half a file")
    assert lib.remove_orphans() == []  # young: may belong to an upload in flight elsewhere
    old = time.time() - 3600
    for p in (orphan, torn):
        os.utime(p, (old, old))
    assert sorted(lib.remove_orphans()) == sorted([orphan.name, torn.name])
    assert [r.id for r in lib.list(ALICE)] == [keep.id]
    lib.load(ALICE, keep.id)


# A worker process that stores voices in a loop; `--stall` makes it stop (forever) right after the
# tensor file is in place and before the row is committed, the widest window for a crash.
WORKER = textwrap.dedent(
    """
    import sys, time, torch
    from utter_tts.voices.library import VoiceLibrary, owner_for_key
    from utter_tts.voices import voice as prompt
    data_dir, key, count, stall = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "stall"
    if stall:
        real_save = prompt.Voice.save
        def save_then_stall(self, path):
            real_save(self, path)
            print("FILE-WRITTEN", flush=True)
            time.sleep(3600)
        prompt.Voice.save = save_then_stall
    lib = VoiceLibrary(data_dir)
    owner = owner_for_key(key)
    print("READY", flush=True)
    for i in range(count):
        v = prompt.Voice(speaker_embedding=torch.randn(64), ref_codes=torch.randint(0, 9, (20, 16)),
                         ref_text=f"text {i}")
        lib.create(owner, v, name=f"{key}-{i}")
        print("CREATED", i, flush=True)
    """
)


def run_worker(tmp_path: Path, key: str, count: int, stall: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), key, str(count), "stall" if stall else "go"],
        stdout=subprocess.PIPE,
        text=True,
    )


def assert_consistent(lib: VoiceLibrary, owner: str) -> list:
    records = lib.list(owner)
    for rec in records:
        voice = lib.load(owner, rec.id)
        assert voice.ref_codes.shape[1] == 16 and voice.ref_text
    return records


def test_kill_9_mid_upload_leaves_no_corrupt_entry(tmp_path):
    lib = VoiceLibrary(tmp_path)
    before = lib.create(owner_for_key("k"), make_voice(), name="before")
    proc = run_worker(tmp_path, "k", 1, stall=True)
    try:
        for line in proc.stdout:
            if line.startswith("FILE-WRITTEN"):
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    restarted = VoiceLibrary(tmp_path)
    assert [r.id for r in assert_consistent(restarted, owner_for_key("k"))] == [before.id]
    # the orphan file exists but nothing points to it; after the grace period it is collected
    files = list((tmp_path / "voices").glob("*.safetensors"))
    assert len(files) == 2
    assert len(restarted.remove_orphans(grace_s=0)) == 1
    assert [p.name for p in (tmp_path / "voices").iterdir()] == [f"{before.id}.safetensors"]


def test_kill_9_at_random_moments_never_corrupts(tmp_path):
    owner = owner_for_key("k")
    for round_ in range(2):
        proc = run_worker(tmp_path, "k", 1000)
        try:
            assert proc.stdout.readline().startswith("READY")
            time.sleep(0.15 + 0.1 * round_)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        # the worker restarts numbering, so later rounds stop at the first name clash; that is fine
        lib = VoiceLibrary(tmp_path)
        assert_consistent(lib, owner)
    lib.remove_orphans(grace_s=0)
    assert {p.name for p in (tmp_path / "voices").iterdir()} == {
        f"{r.id}.safetensors" for r in lib.list(owner)
    }


def test_two_processes_share_one_data_dir(tmp_path):
    VoiceLibrary(tmp_path)  # create the schema once, so both workers race only on inserts
    procs = [run_worker(tmp_path, key, 15) for key in ("p1", "p2")]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    lib = VoiceLibrary(tmp_path)
    for key in ("p1", "p2"):
        records = assert_consistent(lib, owner_for_key(key))
        assert sorted(r.name for r in records) == sorted(f"{key}-{i}" for i in range(15))
    assert lib.count() == 30


def test_other_process_sees_new_and_deleted_voices(tmp_path):
    a = VoiceLibrary(tmp_path)
    b = VoiceLibrary(tmp_path)
    rec = a.create(ALICE, make_voice(), name="shared")
    assert b.load(ALICE, rec.id).ref_text == "hello there"
    a.delete(ALICE, rec.id)
    with pytest.raises(VoiceNotFound):
        b.load(ALICE, rec.id)
