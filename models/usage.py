"""Token usage: the counts of one upstream answer, whichever dialect reported them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """Tokens of one answer. ``cache_read`` and ``cache_write`` are parts of ``prompt`` (0 when not reported)."""

    prompt: int
    completion: int
    cache_read: int = 0
    cache_write: int = 0
