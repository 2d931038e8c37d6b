"""The worker's plain pieces for one unit, without a database: a unit whose images do not
decode is named, a lost database is not mistaken for a bad image, the claim-ahead timing.
(That the worker leaves the database to its store: tests/unit/test_store_boundary.py.)"""

import threading
import time
from pathlib import Path

import pytest
import torch

from ganpool.errors import DatabaseUnavailable
from ganpool.worker.timing import ClaimTiming
from ganpool.worker.unit import BadImage, load_images

SRC = Path(__file__).resolve().parents[2] / "src" / "ganpool"


class Images:
    """A dataset whose image `bad` raises `error`."""

    def __init__(self, bad: int | None = None, error: Exception | None = None):
        self.bad, self.error = bad, error

    def batch(self, indices: list[int]) -> torch.Tensor:
        if self.bad in indices:
            raise self.error
        return torch.zeros(len(indices), 1, 2, 2)


def test_images_load_or_the_bad_one_is_named():
    assert load_images(Images(), (0, 1, 2)).shape == (3, 1, 2, 2)
    bad = load_images(Images(bad=7, error=ValueError("truncated")), (5, 6, 7, 8))
    assert bad == BadImage(7, "image 7: ValueError: truncated")


def test_a_lost_database_is_not_a_bad_image():
    with pytest.raises(DatabaseUnavailable):
        load_images(Images(bad=1, error=DatabaseUnavailable("gone")), (0, 1))


def test_the_fetcher_claims_at_once_when_compute_is_idle_and_waits_while_it_is_busy():
    timing, stopping = ClaimTiming(), threading.Event()
    t0 = time.monotonic()
    timing.wait_for_turn(stopping, ahead=True)  # nothing in hand
    assert time.monotonic() - t0 < 0.2
    timing.prepared(0.01)
    timing.started()  # one unit computing, expected to take ~1 s (the initial guess)
    # It ends after 0.3 s, but reports 0.8 s: the quickest recent unit becomes 0.8 s.
    threading.Timer(0.3, timing.finished, args=(0.8,)).start()
    t0 = time.monotonic()
    timing.wait_for_turn(stopping, ahead=False)  # only once compute is idle
    assert 0.25 < time.monotonic() - t0 < 0.9
    timing.prepared(0.01)
    timing.started()  # expected to end in 0.8 s: claim ahead by what preparing takes (0.3 s)
    t0 = time.monotonic()
    timing.wait_for_turn(stopping, ahead=True)
    assert 0.4 < time.monotonic() - t0 < 0.95
