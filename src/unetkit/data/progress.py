"""A progress bar on stderr for long file loops (silent for short ones and when disabled)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
MIN_ITEMS = 50  # fewer files than this load in a blink: no bar


def track(items: Sequence[T], description: str, enabled: bool = True) -> Iterable[T]:
    if not enabled or len(items) < MIN_ITEMS:
        return items
    from rich.console import Console
    from rich.progress import track as rich_track

    return rich_track(items, description=description, console=Console(stderr=True), transient=True)
