"""Devices: which one to run on, device-to-host copies that never stall other threads' GPU work, layouts,
and the environment settings that choose how work runs on them."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import torch

from utter_tts.errors import InvalidInput

# CUDA-graph captures and cuDNN convolutions, one at a time in the process: a capture's warm-up lets cuDNN
# time its algorithms (a process-wide flag), and a search synchronizes the device, which invalidates a
# capture running in another thread (seen on an H100: two engines warming up together invalidated a
# frame graph; on an H200: a second engine's codec warm-up beside the first engine's background captures
# failed with "operation not permitted when stream is capturing").
# Re-entrant: a codec capture runs the codec inside it. Uncontended once every graph exists.
CAPTURE_LOCK = threading.RLock()


def env_choice(variable: str, choices: Sequence[str], default: str) -> str:
    """Environment setting `variable` (`default` when unset); a value not in `choices` is refused, naming
    the variable (a deployment's typo stops it, rather than silently running the default)."""
    name = os.environ.get(variable, default)
    if name not in choices:
        raise ValueError(f"{variable}={name!r}: use one of {', '.join(choices)}")
    return name


def to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy of `t` (a copy even on the CPU), through pinned memory and an event wait.

    A plain `.cpu()` copies into pageable memory, which blocks in the driver until the copy has run,
    and while the scheduler's thread waited there for a frame, another thread's codec kernels barely
    launched (on an H100 a player's first 80 ms chunk came ~0.85 s late: after the whole generation).
    """
    return to_host_all([t])[0]


def to_host_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`to_host` for several tensors with one wait (they are copied on the current stream)."""
    hosts, done = start_copy(tensors)
    if done is not None:
        done.synchronize()
    return hosts


def start_copy(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Host copies of the tensors, started on the current stream: (copies, the event to wait for before
    reading them; None when they are done already, on the CPU)."""
    if not any(t.device.type == "cuda" for t in tensors):
        return [t.clone() for t in tensors], None  # a copy, as from a GPU: the caller may keep it
    hosts = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        hosts.append(host)
    done = torch.cuda.Event(blocking=True)  # blocking: the waiting thread sleeps instead of spinning
    done.record()
    return hosts, done


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list (or a tensor) as a new tensor on `device`, without waiting: host to CUDA through pinned
    memory and a non-blocking copy. `torch.tensor(values, device=cuda)` copies from pageable memory, which
    first waits for everything queued on the stream (a 64-prompt admission made dozens of such waits)."""
    host = torch.as_tensor(values, dtype=dtype)
    if host.device.type != "cpu" or device.type != "cuda":
        return host.to(device, copy=True)  # a copy, as from the GPU path: the caller may keep its own
    return host.pin_memory().to(device, non_blocking=True)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: as asked (checked), else CUDA when available, else the CPU."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise InvalidInput(f"unknown device {device!r}; use cpu, cuda or cuda:N", param="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(
            f"device {str(device)!r}: CUDA is not available (no GPU, or a CPU-only torch)", param="device"
        )
    if device.type not in ("cpu", "cuda"):
        raise InvalidInput(
            f"device {str(device)!r} is not supported; use cpu, cuda or cuda:N", param="device"
        )
    return device


def empty_like_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new [B, C, T] tensor (of x's dtype by default) laid out as x is: channels last when x's channels
    are its densest axis (the codec's convolution stack on the GPU)."""
    B, C, T = x.shape
    if C > 1 and x.stride(1) < x.stride(2):
        return x.new_empty(B, T, C, dtype=dtype).transpose(1, 2)
    return x.new_empty(B, C, T, dtype=dtype)
