"""Shared fixtures: tiny random checkpoints built once per session with the official classes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

# Two cores shared by the pytest-xdist workers: more threads than cores would only contend.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))
warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")


class CheckpointCache:
    """Build each (model_type, shape) checkpoint once per test session."""

    def __init__(self, root: Path):
        self.root = root
        self.paths: dict[tuple[str, str], Path] = {}

    def __call__(self, model_type: str = "base", shape: str = "tiny-1.7b") -> Path:
        from tests.support.official import build_checkpoint

        key = (model_type, shape)
        if key not in self.paths:
            self.paths[key] = build_checkpoint(self.root / f"{model_type}-{shape}", model_type, shape, seed=7)
        return self.paths[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> CheckpointCache:
    return CheckpointCache(tmp_path_factory.mktemp("checkpoints"))
