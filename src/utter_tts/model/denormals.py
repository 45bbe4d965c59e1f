"""Flush-to-zero for CPU inference, scoped to the calling thread and restored afterwards.

Tiny or quiet activations in the codec (and a random checkpoint's talker) reach denormal floats, which
x86 processes ~100x slower: a one-frame streaming push of a tiny checkpoint took ~700 ms instead of
~20 ms. Denormals are far below anything audible, so flushing them changes no result that matters. The
flag is per thread (MXCSR) and torch has no getter: it is probed, and put back when the work is done,
so a caller's own arithmetic after ours sees the mode it had.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
_TINY = 1e-38  # a normal float32 whose tenth is denormal


def flushing() -> bool:
    """Whether this thread flushes denormal results to zero now."""
    return float(torch.tensor(_TINY, dtype=torch.float32) / 10) == 0.0


@contextlib.contextmanager
def flush_denormals(device: torch.device | str = "cpu") -> Iterator[None]:
    """Flush denormals to zero in this thread while the block runs (CPU only; other devices: no-op)."""
    if torch.device(device).type != "cpu" or flushing():
        yield
        return
    if not torch.set_flush_denormal(True):  # the processor cannot: nothing to restore
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def flush_each(items: Iterator[T], device: torch.device | str = "cpu") -> Iterator[T]:
    """Iterate `items` with denormals flushed while each item is computed, not while the caller holds
    it (a generator's work happens inside `next`). Closing this closes `items`."""
    try:
        while True:
            with flush_denormals(device):
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
