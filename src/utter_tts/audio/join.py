"""Join clips into one: a pause between clips, and a short fade on each side of every seam (no clicks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAUSE_S = 0.12  # between the sentences of a document
FADE_S = 0.005  # so a clip never starts or stops on a non-zero sample at a seam


def join_clips(clips: Sequence[np.ndarray], sample_rate: int, pause_s: float = PAUSE_S) -> np.ndarray:
    """float32 clips joined with `pause_s` of silence between them, faded in and out at each seam; the
    outer ends are left as synthesized (a single clip comes back unchanged)."""
    if not clips:
        return np.zeros(0, dtype=np.float32)
    fade = int(FADE_S * sample_rate)
    gap = np.zeros(int(round(pause_s * sample_rate)), dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
    parts = []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip, dtype=np.float32).copy()
        if fade and len(clip) >= 2 * fade:
            if i > 0:
                clip[:fade] *= ramp
            if i < len(clips) - 1:
                clip[-fade:] *= ramp[::-1]
        if i > 0:
            parts.append(gap)
        parts.append(clip)
    return np.concatenate(parts)
