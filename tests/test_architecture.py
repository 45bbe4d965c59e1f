"""The package's layers, read from the source: every import goes down (or stays on its floor), the two
HTTP faces stand beside each other, neither importing the other, and the agent-framework plugins are pure
clients of the WebSocket."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "utter_tts"

# Floors, lowest first: a module may import from its own floor and the floors below it.
FLOORS = [
    ("base", ["errors", "files", "device", "text", "textcheck", "audio", "stack"]),
    ("model", ["model", "codec", "kernels"]),
    ("pipeline", ["voices", "request", "pipeline"]),
    ("engine", ["engine"]),
    ("api", ["api"]),
    ("service", ["service"]),
    ("faces", ["server", "compat", "wyoming_server", "integrations"]),
    ("top", ["cli", "serve", "demo", "__init__", "__main__"]),
]
BESIDE = [("server", "compat")]  # same floor, and neither may import the other


def floor_of(module: str) -> int:
    """Floor index of a dotted module name inside utter_tts ("utter_tts.model.talker" -> 1)."""
    head = module.split(".")[1] if module.count(".") else "__init__"
    for i, (_, prefixes) in enumerate(FLOORS):
        if head in prefixes:
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported utter_tts module, line) for every import in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("utter_tts")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utter_tts"):
            found.append((node.module, node.lineno))
    return found


def all_imports() -> list[tuple[str, str, int]]:
    return [
        (module_name(p), target, line) for p in sorted(SRC.rglob("*.py")) for target, line in imports_of(p)
    ]


def test_every_module_has_a_floor():
    for path in SRC.rglob("*.py"):
        floor_of(module_name(path))


def test_imports_only_go_down():
    upward = [
        f"{src}:{line} imports {target} ({FLOORS[floor_of(src)][0]} -> {FLOORS[floor_of(target)][0]})"
        for src, target, line in all_imports()
        if floor_of(target) > floor_of(src)
    ]
    assert not upward, "imports running back up:\n" + "\n".join(upward)


@pytest.mark.parametrize("a, b", BESIDE + [(b, a) for a, b in BESIDE])
def test_faces_stand_beside_each_other(a, b):
    crossing = [
        f"{src}:{line} imports {target}"
        for src, target, line in all_imports()
        if src.startswith(f"utter_tts.{a}") and target.startswith(f"utter_tts.{b}")
    ]
    assert not crossing, "\n".join(crossing)


def test_integrations_are_pure_clients():
    """The plugins run in an agent's process, often on another machine than the server: they speak the
    WebSocket protocol and import nothing of the package but each other."""
    inside = [
        f"{src}:{line} imports {target}"
        for src, target, line in all_imports()
        if src.startswith("utter_tts.integrations") and not target.startswith("utter_tts.integrations")
    ]
    assert not inside, "\n".join(inside)


def test_the_check_can_fail(tmp_path, monkeypatch):
    """A planted upward import is reported (the check reads real files, so plant one)."""
    pkg = tmp_path / "utter_tts"
    (pkg / "model").mkdir(parents=True)
    (pkg / "model" / "bad.py").write_text("from utter_tts.engine.engine import Engine\n")
    monkeypatch.setattr(f"{__name__}.SRC", pkg)
    with pytest.raises(AssertionError, match="utter_tts.model.bad:1 imports utter_tts.engine.engine"):
        test_imports_only_go_down()


def test_no_two_modules_share_a_file_name():
    """One name, one module: a reader never has to ask which `text.py` is meant."""
    names: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name != "__init__.py" and path.name != "__main__.py":
            names.setdefault(path.name, []).append(str(path.relative_to(SRC)))
    assert not {n: p for n, p in names.items() if len(p) > 1}
