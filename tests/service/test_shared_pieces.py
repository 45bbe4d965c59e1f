"""What both HTTP faces share (utter_tts.service and the one voice cache): the LRU, the base64 decoder, the
keys of inline reference audio and the JSON record store of jobs."""

from __future__ import annotations

import base64
import os
import threading

import pytest

from utter_tts.service.inline_voices import InlineVoices, reference_key
from utter_tts.service.job_records import RecordStore, new_job_id
from utter_tts.service.reference import InvalidBase64, decode_base64
from utter_tts.voices.cache import VoiceCache

# The cache holds whatever it is given; plain objects stand for voices (nothing here looks inside them).
A, B, C = object(), object(), object()


def test_cache_drops_the_least_recently_used_and_counts():
    cache = VoiceCache(2)
    cache.put("a", A)
    cache.put("b", B)
    assert cache.get("a") is A  # "a" is now the most recent
    cache.put("c", C)
    assert cache.get("b") is None and cache.get("a") is A and cache.get("c") is C
    assert len(cache) == 2 and (cache.hits, cache.misses) == (3, 1)
    cache.pop("a")
    cache.pop("a")  # popping a missing key is no error
    assert cache.get("a") is None and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_cache_of_size_zero_holds_nothing_and_negative_is_refused():
    cache = VoiceCache(0)
    cache.put("a", A)
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError, match="cache size must be >= 0"):
        VoiceCache(-1)


def test_cache_is_safe_across_threads():
    cache = VoiceCache(50)

    def work(n: int) -> None:
        for i in range(500):
            cache.put((n, i % 70), A)
            cache.get((n, (i * 7) % 70))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 and cache.hits + cache.misses == 2000


def test_inline_voices_are_found_by_owner_model_clip_and_transcript():
    """(make() with a real model: tests/modal_app/test_compat_service.py and test_server_voices.py.)"""
    voices = InlineVoices(8)
    voices.put(reference_key("me", "base", b"clip", "words"), A)
    assert voices.find("me", "base", b"clip", "words") is A
    others = [
        ("you", "base", b"clip", "words"),  # another owner
        ("me", "base2", b"clip", "words"),  # another model
        ("me", "base", b"clip", None),  # another transcript
        ("me", "base", b"clip2", "words"),  # another clip
    ]
    for owner, model, clip, text in others:
        assert voices.find(owner, model, clip, text) is None


def test_reference_key_keeps_its_parts_apart():
    key = reference_key("me", "base", b"ab", "c")
    assert key[0] == "me"
    assert key != reference_key("me", "base", b"a", "bc") and key != reference_key("me", "baseab", b"", "c")
    assert reference_key("me", "base", b"x", None) == reference_key("me", "base", b"x", "")


def test_base64_decoder_takes_data_urls_and_wrapped_lines():
    raw = bytes(range(256)) * 3
    text = base64.b64encode(raw).decode()
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # as `base64` prints it
    assert decode_base64(text) == raw
    assert decode_base64(wrapped) == raw
    assert decode_base64("data:audio/wav;base64," + text) == raw


@pytest.mark.parametrize(
    "data, why, code",
    [
        ("%%%", "is not valid base64", "invalid_base64"),
        ("", "is empty", "empty_file"),
        ("data:audio/wav;base64,", "is empty", "empty_file"),
        (b"AAAA", "must be a base64 string", "invalid_type"),
    ],
)
def test_base64_decoder_names_the_field_and_the_reason(data, why, code):
    with pytest.raises(InvalidBase64) as e:
        decode_base64(data, "ref_audio_base64")
    assert (e.value.param, e.value.why, e.value.code) == ("ref_audio_base64", why, code)
    assert e.value.message == f"ref_audio_base64 {why}"


def test_record_store_round_trip_across_instances(tmp_path):
    one, two = RecordStore(tmp_path / "jobs"), RecordStore(tmp_path / "jobs")  # two processes' views
    one["progress:k_1"] = {"status": "running", "progress": 0.5}
    assert two.get("progress:k_1") == {"status": "running", "progress": 0.5}
    assert (tmp_path / "jobs" / "progress__k_1.json").is_file()
    one.delete("progress:k_1")
    assert two.get("progress:k_1", "gone") == "gone"
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == []  # no temporary file left behind


def test_record_store_refuses_keys_that_are_not_names(tmp_path):
    store = RecordStore(tmp_path)
    for bad in ["../escape", "a/b", "", "x" * 201]:
        assert store.get(bad, "default") == "default"
        with pytest.raises(KeyError):
            store[bad] = {}
    (tmp_path / "torn.json").write_text("{not json")
    assert store.get("torn") is None


def test_record_store_writes_with_the_usual_file_mode(tmp_path):
    store = RecordStore(tmp_path)
    store["a"] = {}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_job_ids_are_fresh():
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("job_") and len(i) == 28 for i in ids)


def test_a_reused_pid_is_not_the_jobs_process():
    """A job record names its process by pid and start: the same pid started at another time (a restarted
    container's server is pid 1 again) is another process; a record without a start keeps the old rule."""
    from utter_tts.service.job_records import process_alive, this_process

    me = this_process()
    assert process_alive(me["pid"], me["pid_started"])
    assert not process_alive(me["pid"], me["pid_started"] + 1)
    assert process_alive(me["pid"]) and not process_alive("1")
