"""Peer scores and bans, kept by node id (and bans also by address).

A score starts at 0, drops with each penalty and recovers with time; an entry exists
only while it is below 0, and a ban only until it ends.  Identities cost an attacker
nothing, so the tables are also capped: past the cap the entries that matter least go
first (the scores nearest 0 of peers not connected, the bans that end soonest).
"""

from __future__ import annotations

from collections.abc import Container

from node.p2p.settings import P2PSettings

MAX_SCORES = 10_000
MAX_BANS = 10_000


class Reputation:
    def __init__(self, settings: P2PSettings):
        self.settings = settings
        self._scores: dict[str, tuple[int, float]] = {}  # peer id -> (score, recovering since)
        self._banned_ids: dict[str, float] = {}  # peer id -> monotonic time the ban ends
        self._banned_addresses: dict[str, float] = {}

    def __len__(self) -> int:
        """Entries held, for the tests that check the tables stay bounded."""
        return len(self._scores) + len(self._banned_ids) + len(self._banned_addresses)

    def score(self, peer_id: str, now: float) -> int:
        entry = self._scores.get(peer_id)
        if entry is None:
            return 0
        score, since = entry
        rate = self.settings.score_recovery_per_second
        # Whole points only, so two penalties that add up to the threshold always reach it.
        recovered = int((now - since) * rate)
        if recovered <= 0:
            return score
        score = min(0, score + recovered)
        if score == 0:
            del self._scores[peer_id]
        else:
            self._scores[peer_id] = (score, since + recovered / rate)
        return score

    def lower(self, peer_id: str, points: int, now: float) -> int:
        """Take `points` off; the new score."""
        score = self.score(peer_id, now) - points
        since = self._scores[peer_id][1] if peer_id in self._scores else now
        self._scores[peer_id] = (score, since)
        return score

    def ban(self, peer_id: str, address: str, now: float) -> None:
        until = now + self.settings.ban_seconds
        self._banned_ids[peer_id] = until
        if address:
            self._banned_addresses[address] = until
        self._scores.pop(peer_id, None)  # the ban is the punishment; it returns with a clean slate

    def ban_address(self, address: str, now: float) -> None:
        self._banned_addresses[address] = now + self.settings.ban_seconds

    def ban_remaining(self, peer_id: str, now: float) -> float:
        return max(0.0, self._banned_ids.get(peer_id, 0.0) - now)

    def address_banned(self, address: str, now: float, peer_id: str | None = None) -> bool:
        if self._banned_addresses.get(address, 0.0) > now:
            return True
        return peer_id is not None and self._banned_ids.get(peer_id, 0.0) > now

    def prune(self, now: float, connected: Container[str]) -> None:
        for table in (self._banned_ids, self._banned_addresses):
            for key in [key for key, until in table.items() if until <= now]:
                del table[key]
            if len(table) > MAX_BANS:
                for key in sorted(table, key=table.__getitem__)[: len(table) - MAX_BANS]:
                    del table[key]
        for peer_id in list(self._scores):
            self.score(peer_id, now)  # forgets the scores that have recovered
        if len(self._scores) > MAX_SCORES:
            gone = sorted((peer_id for peer_id in self._scores if peer_id not in connected),
                          key=lambda peer_id: -self._scores[peer_id][0])
            for peer_id in gone[: len(self._scores) - MAX_SCORES]:
                del self._scores[peer_id]
