"""The software stack the engine is written for and measured on (stack.json), and checks against it."""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def stack() -> dict[str, Any]:
    """stack.json: python, torch, torch_cuda (the CUDA variant of the torch build), triton."""
    return json.loads(resources.files("utter_tts").joinpath("stack.json").read_text("utf-8"))


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string ("3.6.0+git...", "3.4"): what the kernels' APIs depend on."""
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def triton_problem(version: str | None) -> str | None:
    """Why the fused kernels cannot run on Triton `version` (None: not installed), or None when they
    can: the kernels and their interpreter plumbing follow the stack's Triton release, not older ones."""
    want = stack()["triton"]
    if version is None:
        return f"Triton is not installed (the fused kernels need {want})"
    if _release(version) < _release(want):
        return f"Triton {version} is older than the {want} the fused kernels are written for"
    return None


@functools.lru_cache(maxsize=1)
def installed_triton_problem() -> str | None:
    """`triton_problem` of the installed Triton, logged once per process when there is one."""
    try:
        import triton

        version = triton.__version__
    except ImportError:
        version = None
    problem = triton_problem(version)
    if problem is not None:
        log.warning("fused kernels off, the engine runs eager: %s", problem)
    return problem


def installed() -> dict[str, str | None]:
    """The torch and Triton of this process, as their versions say."""
    out: dict[str, str | None] = {}
    for name in ("torch", "triton"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def differences(found: dict[str, str | None]) -> list[str]:
    """How `found` (`installed()`) differs from the stack: torch's release and CUDA variant, Triton's."""
    want, out = stack(), []
    torch_version = found.get("torch") or "none"
    release, _, variant = torch_version.partition("+")
    if release != want["torch"] or (variant and variant != want["torch_cuda"]):
        out.append(f"torch {torch_version}, the stack's is {want['torch']}+{want['torch_cuda']}")
    if found.get("triton") != want["triton"]:
        out.append(f"triton {found.get('triton')}, the stack's is {want['triton']}")
    return out


if __name__ == "__main__":  # `python -m utter_tts.stack`: bench/run_gpu.sh labels its machine with it
    found = installed()
    named = {k: v for k, v in stack().items() if k != "comment"}
    print("stack", json.dumps(named), "| here", json.dumps(found))
    for line in differences(found):
        print("NOT THE DEPLOYED STACK:", line)
