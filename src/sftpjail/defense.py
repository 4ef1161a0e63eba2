"""Brute-force defence: score failed logins, ban the sources that guess.

Theory of operation
-------------------
The supervisor tells the defence about every failed login (`record_failure`)
and asks it about every new connection (`refusal`).  Two scores are kept,
each a list of failure times inside a sliding window:

* **per source address**: `max_failures` failures within `window` seconds
  ban the address.  The first ban lasts `ban_time`; each later ban of the
  same address doubles, up to `max_ban_time`.  An address that stays quiet
  for `max_ban_time` after its last ban starts afresh.
* **per user name**: when one name collects `max_failures_per_user`
  failures within the window, from however many addresses, the name is
  under a distributed attack, and every address that fails on it is banned
  at its first failure.  This trades a possible lock-out of the real user
  (for one ban time; the allowlist exempts known offices) against an
  attacker with many addresses.

Banned addresses are refused before the SSH handshake, so a ban costs the
server one accept and one close.  Addresses on the allowlist are never
scored, banned or capped.

State lives in the supervisor, so it survives worker crashes, and only
behind the `BanStore` interface, so a store shared by several servers (a
database) can replace `MemoryBanStore` without touching the supervisor.
Memory is bounded: at most `MAX_TRACKED` addresses and as many user names
are remembered; the least recently seen are forgotten first.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sftpjail.audit import audit
from sftpjail.config import DefenseSettings

logger = logging.getLogger("sftpjail.defense")

MAX_TRACKED = 65536
BANNED = "banned"
TOO_MANY_UNAUTHENTICATED = "too many unauthenticated connections"

# The one line per ban that fail2ban matches (docs/operations.md); tests
# hold the documented filter against it, so change both together.
BAN_LINE = "Banned %s for %d seconds after %d failed logins."


@dataclass(frozen=True)
class Ban:
    """One banned address and when (wall-clock seconds) its ban ends."""

    source: str
    until: float
    seconds: int
    failures: int


class BanStore(Protocol):
    """What the supervisor needs from a store of failures and bans."""

    def record_failure(self, source: str, user: str) -> Ban | None:
        """Count a failed login; return the ban it caused, if any."""

    def is_banned(self, source: str) -> Ban | None:
        """The ban in force for `source`, or None."""

    def bans(self) -> list[Ban]:
        """Every ban in force, soonest to end first."""


@dataclass
class _SourceRecord:
    failures: deque[float] = field(default_factory=deque)
    ban: Ban | None = None
    ban_count: int = 0
    last_seen: float = 0.0


class MemoryBanStore:
    """Failures and bans of this process, kept in memory."""

    def __init__(
        self, settings: DefenseSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._sources: OrderedDict[str, _SourceRecord] = OrderedDict()
        self._users: OrderedDict[str, deque[float]] = OrderedDict()

    def record_failure(self, source: str, user: str) -> Ban | None:
        """Count a failed login of `user` from `source`; ban if over a limit."""

        now = self.clock()
        targeted = self._count_user_failure(user, now)
        record = self._source(source, now)
        if record.ban is not None and record.ban.until > now:
            return None
        record.failures.append(now)
        self._trim(record.failures, now)

        if len(record.failures) >= self.settings.max_failures or targeted:
            return self._ban(source, record, now)
        return None

    def is_banned(self, source: str) -> Ban | None:
        """The ban in force for `source`, or None once it has run out."""

        record = self._sources.get(source)
        if record is None or record.ban is None:
            return None
        if record.ban.until <= self.clock():
            return None
        return record.ban

    def bans(self) -> list[Ban]:
        """Every ban still in force, soonest to end first."""

        now = self.clock()
        active = [
            record.ban
            for record in self._sources.values()
            if record.ban is not None and record.ban.until > now
        ]
        return sorted(active, key=lambda ban: ban.until)

    def _count_user_failure(self, user: str, now: float) -> bool:
        """Score the user name; True while it is under a distributed attack."""

        failures = self._users.pop(user, None) or deque()
        failures.append(now)
        self._trim(failures, now)
        self._users[user] = failures
        while len(self._users) > MAX_TRACKED:
            self._users.popitem(last=False)
        return len(failures) >= self.settings.max_failures_per_user

    def _source(self, source: str, now: float) -> _SourceRecord:
        record = self._sources.pop(source, None)
        if record is None or self._is_stale(record, now):
            record = _SourceRecord()
        record.last_seen = now
        self._sources[source] = record
        while len(self._sources) > MAX_TRACKED:
            self._sources.popitem(last=False)
        return record

    def _is_stale(self, record: _SourceRecord, now: float) -> bool:
        """Quiet for max_ban_time since its last failure or ban: forget it."""

        ended = record.ban.until if record.ban is not None else record.last_seen
        return now - max(ended, record.last_seen) > self.settings.max_ban_time

    def _ban(self, source: str, record: _SourceRecord, now: float) -> Ban:
        growth = 2**record.ban_count
        seconds = min(self.settings.ban_time * growth, self.settings.max_ban_time)
        ban = Ban(source, now + seconds, round(seconds), len(record.failures))
        record.ban = ban
        record.ban_count += 1
        record.failures.clear()
        return ban

    def _trim(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self.settings.window:
            failures.popleft()


class Defense:
    """The supervisor's front to a `BanStore`: allowlist, caps and logging."""

    def __init__(self, settings: DefenseSettings, store: BanStore) -> None:
        self.settings = settings
        self.store = store
        self.bans_total = 0

    def exempt(self, source: str) -> bool:
        """True for an address the defence never touches."""

        if not self.settings.enabled:
            return True
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self.settings.allowlist)

    def refusal(self, source: str, unauthenticated: int) -> str | None:
        """Why a new connection from `source` must be refused, or None.

        `unauthenticated` counts the source's connections that have not
        logged in yet.
        """

        if self.exempt(source):
            return None
        if self.store.is_banned(source) is not None:
            return BANNED
        if unauthenticated >= self.settings.max_unauthenticated_per_source:
            return TOO_MANY_UNAUTHENTICATED
        return None

    def record_failure(self, source: str, user: str) -> Ban | None:
        """Count a failed login; log and audit the ban it causes, if any."""

        if self.exempt(source):
            return None
        ban = self.store.record_failure(source, user)
        if ban is not None:
            self.bans_total += 1
            logger.warning(BAN_LINE, ban.source, ban.seconds, ban.failures)
            audit(
                "defense.banned",
                peer=ban.source,
                seconds=ban.seconds,
                failures=ban.failures,
                user=user,
            )
        return ban

    def bans(self) -> list[Ban]:
        """Every ban in force."""

        return self.store.bans()


def defense_from_settings(settings: DefenseSettings) -> Defense:
    """The defence the supervisor runs with: an in-memory store."""

    return Defense(settings, MemoryBanStore(settings))
