"""The stack the engine is written for (stack.json): an older or missing Triton turns the fused kernels off
with one log line, and the engine runs eager instead of failing at its first request."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

import utter_tts.stack as stack_module
from utter_tts.engine.runner import kernels_available
from utter_tts.stack import differences, stack, triton_problem


@pytest.fixture
def hopper(monkeypatch):
    """A CUDA device as the kernels' check sees it (this machine has none), and a fresh check."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    stack_module.installed_triton_problem.cache_clear()
    yield torch.device("cuda")
    stack_module.installed_triton_problem.cache_clear()


@pytest.mark.parametrize("version", ["3.4.0", "2.3.1", None])
def test_an_old_or_missing_triton_gives_the_eager_engine_and_one_log_line(
    hopper, monkeypatch, caplog, version
):
    import triton

    if version is None:
        monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    else:
        monkeypatch.setattr(triton, "__version__", version)
    with caplog.at_level(logging.WARNING, logger="utter_tts.stack"):
        assert kernels_available(hopper) is False
        assert kernels_available(hopper) is False
    [record] = caplog.records
    assert "the engine runs eager" in record.getMessage() and stack()["triton"] in record.getMessage()


def test_the_stacks_triton_and_newer_run_the_kernels(hopper, monkeypatch, caplog):
    import triton

    for version in (stack()["triton"], "3.6.1", "3.7.0+git1234"):
        monkeypatch.setattr(triton, "__version__", version)
        stack_module.installed_triton_problem.cache_clear()
        with caplog.at_level(logging.WARNING, logger="utter_tts.stack"):
            assert kernels_available(hopper) is True
    assert not caplog.records
    assert kernels_available(torch.device("cpu")) is False  # the kernels run on CUDA only


def test_differences_name_what_is_not_the_stack():
    want = stack()
    same = {"torch": f"{want['torch']}+{want['torch_cuda']}", "triton": want["triton"]}
    assert differences(same) == [] and differences({**same, "torch": want["torch"]}) == []
    assert differences({**same, "torch": f"{want['torch']}+cu130"}) == [
        f"torch {want['torch']}+cu130, the stack's is {want['torch']}+{want['torch_cuda']}"
    ]
    assert differences({**same, "triton": "3.4.0"}) and differences({"torch": None, "triton": None})
    assert triton_problem("3.4.0") and triton_problem(None) and triton_problem(want["triton"]) is None
