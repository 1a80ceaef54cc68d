"""What one verify of a recovery point found, as the catalog records it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VerifyOutcome:
    """A verify's outcome: ``damaged`` byte ranges (0: every chunk read back), the first of
    them (or why the point or a disk's manifest could not be read), bytes read, seconds."""

    point_id: str
    vm: str
    damaged: int
    first_damage: str | None
    bytes_read: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.damaged == 0
