"""Garbage collection for a process that holds many runs or requests at once."""

from __future__ import annotations

import gc
import sys

YOUNG_THRESHOLD = 100_000  # allocations between collections of the youngest generation
MIDDLE_THRESHOLD = 100  # young collections between collections of the middle one
# From here the collector is incremental, with no middle generation: its second threshold
# paces the scans of the old one instead, and is left as Python sets it
INCREMENTAL_COLLECTOR = (3, 14)


def tune_gc_for_serving() -> None:
    """Tune Python's cyclic garbage collector for a process that serves (``orla serve``)
    or holds thousands of runs at once.

    What exists now (modules, plans, the app) is frozen out of the collector's scans. The
    youngest generation is collected every ``YOUNG_THRESHOLD`` allocations rather than
    Python's default (700; 2,000 from Python 3.13): without it, a waiting call's objects
    outlive several young collections, reach the oldest generation and set off full
    scans of everything the process holds (a third of the wall time with 10,000
    workflows in flight, ``benchmarks/sim_10k.py``; 40% of the proxy's CPU at 1,000
    concurrent streams). The middle generation is collected every ``MIDDLE_THRESHOLD``
    young collections, not 10 (before Python 3.14, whose incremental collector has none):
    it holds the objects of calls still in flight, which each of its collections walked
    (half a second with 10,000 workflows in flight) and found alive.

    The count behind the young threshold is of container objects made less those freed,
    old ones included, so under a steady load a young collection walks several times the
    threshold (300,000 live objects at 50,000). With 10,000 workflows in flight, against
    50,000 and 10, the collector's CPU falls from 2.1 to 2.4 s to 1.0 to 1.2 s, and its
    longest pause from about 540 ms to 140 to 200 ms (``benchmarks/README.md``). Call it
    once, after start-up."""
    gc.collect()
    gc.freeze()
    middle, oldest = gc.get_threshold()[1:]
    if sys.version_info < INCREMENTAL_COLLECTOR:
        middle = MIDDLE_THRESHOLD
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
