"""Device-to-host copies that never stall other threads' GPU work."""

from __future__ import annotations

import torch


def to_host(t: torch.Tensor) -> torch.Tensor:
    """`t.cpu()`, through pinned memory and an event wait.

    A plain `.cpu()` copies into pageable memory, which blocks in the driver until the copy has run,
    and while the scheduler's thread waited there for a frame, another thread's codec kernels barely
    launched (on an H100 a player's first 80 ms chunk came ~0.85 s late: after the whole generation).
    """
    return to_host_all([t])[0]


def to_host_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`to_host` for several tensors with one wait (they are copied on the current stream)."""
    if not any(t.device.type == "cuda" for t in tensors):
        return [t.cpu() for t in tensors]
    hosts = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        hosts.append(host)
    done = torch.cuda.Event(blocking=True)  # blocking: the waiting thread sleeps instead of spinning
    done.record()
    done.synchronize()
    return hosts
