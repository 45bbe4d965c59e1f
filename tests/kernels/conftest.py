"""Kernel tests run on the CPU through Triton's interpreter.

TRITON_INTERPRET is set here (CPU-only machines) before anything imports triton, as usual; but Triton
reads it when a function is decorated, so this alone would break if triton or our kernels were imported
first (e.g. by another test module). utter_tts.kernels therefore picks the interpreter per launch for
CPU tensors whatever the variable says (kernels/_jit.py), and test_interpreter_does_not_depend_on_import_order
checks that in a fresh process."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
