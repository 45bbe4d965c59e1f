"""Server settings and the `serve` command line: auth defaults, key handling, refusal of unsafe setups."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect as ws_connect

from tests.server.conftest import ALICE
from utter_tts.server.settings import ServerConfig, build_parser, config_from_args, is_loopback


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("::", False),
    ],
)
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_auth_is_on_by_default_beyond_localhost(tmp_path):
    assert not ServerConfig(host="127.0.0.1", data_dir=tmp_path).auth_enabled
    assert ServerConfig(host="0.0.0.0", data_dir=tmp_path, api_keys=["k"]).auth_enabled
    with pytest.raises(ValueError, match="API keys are required"):
        ServerConfig(host="0.0.0.0", data_dir=tmp_path).check()
    ServerConfig(host="0.0.0.0", data_dir=tmp_path, auth="off").check()  # explicit opt-out
    # keys given on localhost are enforced too
    assert ServerConfig(host="127.0.0.1", data_dir=tmp_path, api_keys=["k"]).auth_enabled


def test_cli_flags_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UTTER_TTS_API_KEYS", "sk-a, sk-b")
    monkeypatch.setenv("UTTER_TTS_DATA_DIR", str(tmp_path))
    args = build_parser().parse_args(
        [
            "Qwen/Qwen3-TTS-12Hz-1.7B-Base",
            "./vd",
            "--host",
            "0.0.0.0",
            "--api-key",
            "sk-c",
            "--max-concurrency",
            "4",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.models == ["Qwen/Qwen3-TTS-12Hz-1.7B-Base", "./vd"]
    assert cfg.api_keys == ["sk-c", "sk-a", "sk-b"] and cfg.auth_enabled
    assert cfg.data_dir == tmp_path and cfg.max_concurrency == 4
    cfg.check()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--device", "cpu"], 2),  # no engine on the CPU by default: generations take turns
        (["--device", "cpu", "--engine", "on"], 16),  # the engine batches: as many as it has streams
        (["--device", "cuda", "--engine-streams", "8"], 8),  # auto: the engine runs on CUDA
        (["--device", "cuda", "--engine", "off"], 2),
        (["--device", "cuda", "--max-concurrency", "3"], 3),  # an explicit value wins
    ],
)
def test_concurrency_follows_the_engine(argv, expected):
    assert config_from_args(build_parser().parse_args(["model", *argv])).max_concurrency == expected


def test_weights_flag_reaches_the_engine(monkeypatch, tmp_path):
    """--weights int8|fp8 (default bf16) flows into the engine's settings; an unknown mode or 8-bit without
    the engine is refused, naming it."""
    from utter_tts.api import TTS
    from utter_tts.engine.runner import WEIGHT_MODES
    from utter_tts.errors import InvalidInput
    from utter_tts.server.registry import ModelRegistry
    from utter_tts.server.settings import WEIGHTS

    assert WEIGHTS == WEIGHT_MODES
    assert config_from_args(build_parser().parse_args(["model"])).weights == "bf16"
    cfg = config_from_args(
        build_parser().parse_args(["model", "--weights", "int8", "--data-dir", str(tmp_path)])
    )
    assert cfg.weights == "int8"
    cfg.check()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", "--weights", "int4"])
    with pytest.raises(ValueError, match="weights must be one of bf16, int8, fp8, not 'int4'"):
        ServerConfig(data_dir=tmp_path, weights="int4").check()
    with pytest.raises(ValueError, match="--weights fp8 needs the engine"):
        ServerConfig(data_dir=tmp_path, weights="fp8", engine="off").check()
    with pytest.raises(InvalidInput, match="--weights int8 needs the engine") as e:  # auto: off on the CPU
        ModelRegistry().load_all(["model"], "cpu", "float32", "auto", 4, "int8")
    assert e.value.param == "weights"
    seen = {}

    class Loaded:
        engine = None
        model_type, device, dtype = "base", "cpu", "float32"

    monkeypatch.setattr(TTS, "from_pretrained", lambda src, **kw: seen.update(kw) or Loaded())
    ModelRegistry().load_all(["model"], "cpu", "float32", "on", 4, "int8")
    assert seen["engine"] == {"max_streams": 4, "weights": "int8"}


def test_websocket_bad_start_message(server):
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "session.start", "voice": "nobody"}))
        event = json.loads(ws.recv(timeout=30))
    assert event["type"] == "error"
    assert (event["error"]["code"], event["error"]["param"]) == ("voice_not_found", "voice")
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        ws.send("{not json")
        event = json.loads(ws.recv(timeout=30))
    assert event["error"]["code"] == "invalid_json"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=30) as ws:
        ws.send(b"\x00\x01binary")
        event = json.loads(ws.recv(timeout=30))
    assert event["error"]["code"] == "invalid_message"
