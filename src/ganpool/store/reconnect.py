"""Riding out a database restart or a network cut: exponential backoff, bounded in time, and
one line when the database is lost and one when it is back (not one per retry)."""

from __future__ import annotations

import logging
import time

import psycopg

from ganpool.errors import DatabaseUnavailable
from ganpool.notices import Notice

log = logging.getLogger(__name__)

# What a lost server looks like to a client: a refused or dropped connection.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Outage:
    """Whether a process has lost its database. Shared by all the connections of one
    process (a worker has three), so that an outage reads as two lines in all."""

    def __init__(self) -> None:
        self.notice = Notice(log, logging.WARNING)
        self.since: float | None = None

    def lost(self, error: BaseException) -> None:
        if self.notice.set("lost", f"lost the database ({first_line(error)}); reconnecting"):
            self.since = time.monotonic()

    def back(self) -> None:
        if self.notice.state is None:
            return
        away = time.monotonic() - (self.since or time.monotonic())
        self.notice.clear(f"the database is back (after {away:.0f}s); carrying on")


class Backoff:
    """0.25 s, 0.5 s, 1 s, ... up to `cap`; gives up once `give_up_s` have passed."""

    def __init__(
        self,
        first: float = 0.25,
        cap: float = 5.0,
        give_up_s: float = 600.0,
        outage: Outage | None = None,
    ):
        self.first, self.cap, self.give_up_s = first, cap, give_up_s
        self.outage = outage or Outage()
        self.reset()

    def reset(self) -> None:
        """Connected (again)."""
        if getattr(self, "since", None) is not None:
            self.outage.back()
        self.delay = self.first
        self.since: float | None = None

    def wait(self, error: BaseException) -> None:
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since > self.give_up_s:
            raise DatabaseUnavailable(
                f"the database has been unreachable for {self.give_up_s:.0f}s, giving up: "
                f"{first_line(error)}"
            ) from None
        self.outage.lost(error)
        log.debug("database call failed (%s); retrying in %.2fs", error, self.delay)
        time.sleep(self.delay)
        self.delay = min(self.cap, self.delay * 2)


class Pace:
    """At most `rate` wake-ups a second on average, `burst` of them at once: what a worker
    or the coordinator does when a notification arrives. Notifications are hints that anyone
    may send, so a flood of them must not become a flood of queries; a genuine wake-up (a
    version published after a quiet spell) still goes through at once."""

    def __init__(self, rate: float, burst: float = 3.0):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()

    def reset(self) -> None:
        """Something real happened (a unit was claimed): the next wake-ups are free again."""
        self.tokens = self.burst

    def wait(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            time.sleep((1 - self.tokens) / self.rate)
            self.at = time.monotonic()
            self.tokens = 1
        self.tokens -= 1
