"""Which annotator holds which item, and which items were skipped.

Several browser tabs label one pool: an item handed to one is *leased* to it for a while and not
handed to another; a skipped item goes to a list the annotator can return to, and is not handed
out again until then. Leases live in memory only (after a restart they simply vanish); callers
hold the session lock.
"""

from __future__ import annotations

import time

__all__ = ["Leases"]


class Leases:
    """Item leases per client (one item per client) and the skipped list."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._until: dict[int, tuple[str, float]] = {}  # index -> (client, deadline)
        self._held: dict[str, int] = {}  # client -> index
        self.skipped: dict[int, str] = {}  # index -> who skipped it (in order)

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, index: int) -> bool:
        return int(index) in self._until

    def expire(self) -> None:
        now = time.monotonic()
        for index, (_client, until) in list(self._until.items()):
            if until < now:
                self.drop(index)

    def holder(self, index: int) -> str | None:
        lease = self._until.get(int(index))
        return lease[0] if lease is not None else None

    def held(self, client: str) -> int | None:
        return self._held.get(client)

    def lease(self, index: int, client: str) -> None:
        """Hand ``index`` to ``client`` (which gives back what it held before)."""
        index = int(index)
        old = self._held.get(client)
        if old is not None and old != index:
            self._until.pop(old, None)
        self._until[index] = (client, time.monotonic() + self.seconds)
        self._held[client] = index

    def release(self, index: int, client: str) -> bool:
        """Give back ``index`` if ``client`` holds it; True if it did."""
        if self.holder(index) != client:
            return False
        self.drop(index)
        return True

    def drop(self, index: int) -> None:
        """Forget any lease of ``index`` (e.g. it has just been labelled)."""
        lease = self._until.pop(int(index), None)
        if lease is not None and self._held.get(lease[0]) == int(index):
            del self._held[lease[0]]

    def skip(self, index: int, client: str) -> None:
        self.skipped.pop(int(index), None)
        self.skipped[int(index)] = client

    def unskip(self, index: int) -> None:
        self.skipped.pop(int(index), None)
