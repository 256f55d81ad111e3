"""Garbage collection for a process that holds many runs or requests at once."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations between collections of the youngest generation
MIDDLE_THRESHOLD = 100  # young collections between collections of the middle one


def tune_gc_for_serving() -> None:
    """Tune Python's cyclic garbage collector for a process that serves (``orla serve``)
    or holds thousands of runs at once: what exists now (modules, plans, the app) is
    frozen out of the collector's scans, and the youngest generation is collected every
    ``YOUNG_THRESHOLD`` allocations rather than Python's default (700; 2,000 from Python
    3.13). Without it, a waiting call's objects outlive several young collections, reach
    the oldest generation and set off full scans of everything the process holds: a third
    of the wall time with 10,000 workflows in flight (``benchmarks/sim_10k.py``), 40% of
    the proxy's CPU at 1,000 concurrent streams. The count is of container objects made
    less those freed, so each young collection walks up to that many live objects: at
    50,000 a young pause is longer than at 10,000, but there are a fifth as many, and
    fewer objects reach the older generations whose collections walk more. The middle
    generation is collected every ``MIDDLE_THRESHOLD`` young collections, not 10: it
    holds the objects of calls still in flight, which every one of its collections walks
    (half a second with 10,000 workflows in flight) and finds alive. The collector's time
    falls by a third to four fifths, its longest pause by a third (``benchmarks/README.md``).
    Call it once, after start-up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, gc.get_threshold()[2])
