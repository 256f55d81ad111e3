"""The agent layer: identities, the transition model, CacheSage and its baselines, the
layer that runs policies, block eviction in the simulator's prefix cache, trace replay,
and slot lending in the pool, all in process on the simulator."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orla_sdk as orla
from orla_sdk.agents import (
    AgentEvent,
    AgentKey,
    AgentLayer,
    AgentPolicy,
    Cached,
    CacheSage,
    LeastRecentlyUsed,
    SmallIncrement,
    StepsToNext,
    TraceCall,
    TransitionModel,
    fingerprint,
    policies_from,
    policy_by_name,
)
from orla_sdk.agents.blocks import ScoredOrder
from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.cache import IdleOrder, LruOrder, PrefixCache
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.replay import (
    BLOCK_TOKENS,
    POLICIES,
    FutureOrder,
    Workload,
    cache_replay,
    engine_replay,
    interleave,
)
from orla_sdk.errors import BackendError, OrlaError
from orla_sdk.runtime.memory import TEMPLATE_EVERY, MemoryManager, SlotTable

W = "wf"  # the workload of the hand-built events


def started(agent: str, run: str = "r", workload: str = W, *, warmup: bool = False
            ) -> AgentEvent:
    return AgentEvent("call_started", AgentKey(workload, agent, run),
                      data={"warmup": True} if warmup else {})


def ended(run: str, workload: str = W) -> AgentEvent:
    return AgentEvent("turn", AgentKey(workload, "", run), data={"ended": True})


def feed(model: TransitionModel, agents: str, run: str = "r") -> None:
    for agent in agents:
        model.observe(run, agent)


def sage_after(agents: str, run: str = "r", **options: Any) -> CacheSage:
    sage = CacheSage(**options)
    for agent in agents:
        sage.observe(started(agent, run))
    return sage


def brute_first_passage(model: TransitionModel, start: str, steps: int) -> dict[str, float]:
    """P(each agent is reached within ``steps`` steps from ``start``), by summing over every
    path: a path counts once for each agent at the first step that agent appears."""
    reach: dict[str, float] = {}

    def walk(state: str, probability: float, depth: int, seen: frozenset[str]) -> None:
        if depth == steps:
            return
        for nxt, p in model.next_probabilities(state).items():
            q = probability * p
            if nxt not in seen:  # a first arrival counts whatever follows it
                reach[nxt] = reach.get(nxt, 0.0) + q
            walk(nxt, q, depth + 1, seen | {nxt})

    walk(start, 1.0, 0, frozenset())
    return reach


# ---- the transition model ------------------------------------------------------------------
def test_next_probabilities_count_each_agents_successors() -> None:
    model = TransitionModel()
    feed(model, "ABACAB")  # A->B, B->A, A->C, C->A, A->B
    assert model.next_probabilities("A") == pytest.approx({"B": 2 / 3, "C": 1 / 3})
    assert model.next_probabilities("B") == {"A": 1.0}
    assert model.next_probabilities("C") == {"A": 1.0}
    assert model.next_probabilities("Z") == {}
    assert model.observations == 6


def test_the_window_forgets_old_successors() -> None:
    model = TransitionModel(window=2)
    feed(model, "ABACAD")  # A's successors B, C, D: only the last two remain
    assert model.next_probabilities("A") == {"C": 0.5, "D": 0.5}
    feed(model, "ADAD", run="r2")
    assert model.next_probabilities("A") == {"D": 1.0}


def test_survival_is_the_exact_first_passage_probability() -> None:
    # A->B (1.0); B->A 0.5, B->C 0.5; C has no successors
    for horizon, expected in [
        (1, {"A": 0.5, "C": 0.5}),
        # B->A, B->C at step 1; B->A->B first returns to B at step 2
        (2, {"A": 0.5, "B": 0.5, "C": 0.5}),
        # C also through B->A->B->C; B is not counted again after its first return
        (3, {"A": 0.5, "B": 0.5, "C": 0.75}),
    ]:
        model = TransitionModel(horizon=horizon)
        feed(model, "ABABC")
        assert model.next_probabilities("A") == {"B": 1.0}
        assert model.next_probabilities("B") == {"A": 0.5, "C": 0.5}
        assert model.survival("B") == pytest.approx(expected), horizon
    model = TransitionModel(horizon=3)
    feed(model, "ABABC")
    assert model.survival("A") == pytest.approx({"B": 1.0, "A": 0.5, "C": 0.5})


def test_survival_matches_path_enumeration_on_random_chains() -> None:
    rng = random.Random(7)
    for trial in range(20):
        horizon = rng.randint(1, 4)
        model = TransitionModel(window=rng.randint(2, 8), horizon=horizon)
        for run in range(3):
            feed(model, "".join(rng.choice("ABCDE") for _ in range(rng.randint(3, 15))),
                 run=f"r{run}")
        for start in "ABCDE":
            got = model.survival(start)
            want = brute_first_passage(model, start, horizon)
            for agent in got.keys() | want.keys():
                assert got.get(agent, 0.0) == pytest.approx(want.get(agent, 0.0)), (trial, start)
                assert 0.0 <= got.get(agent, 0.0) <= 1.0 + 1e-9


def test_survival_follows_new_observations() -> None:
    model = TransitionModel(window=2, horizon=1)
    feed(model, "AB")
    assert model.survival("A") == {"B": 1.0}
    feed(model, "ACAC", run="r2")  # A's window is now C, C
    assert model.survival("A") == {"C": 1.0}


def test_transitions_never_cross_runs() -> None:
    model = TransitionModel()
    model.observe("r1", "A")
    model.observe("r2", "B")
    model.observe("r1", "C")
    model.observe("r2", "D")
    assert model.next_probabilities("A") == {"C": 1.0}
    assert model.next_probabilities("B") == {"D": 1.0}
    assert model.last == {"r1": "C", "r2": "D"}


def test_end_run_drops_the_runs_last_agent() -> None:
    model = TransitionModel()
    feed(model, "AB")
    model.end_run("r")
    assert "r" not in model.last
    model.observe("r", "C")  # a new run under the same id: no B->C transition
    assert model.next_probabilities("B") == {}
    assert model.next_probabilities("A") == {"B": 1.0}
    model.end_run("never-seen")  # no error


# ---- CacheSage -------------------------------------------------------------------------------
def test_cachesage_keeps_the_predicted_agent_over_a_more_recent_one() -> None:
    sage = sage_after("ABABA")  # the run's current agent is A; B always follows A
    predicted = Cached(AgentKey(W, "B", "r"), age=10)
    unpredicted = Cached(AgentKey(W, "C", "r"), age=1)
    scores = sage.keep_scores([predicted, unpredicted])
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(4.0 * 1.0 + math.exp(-0.1 * 10))
    assert scores[1] == pytest.approx(math.exp(-0.1 * 1))
    assert AgentLayer([sage]).victim([predicted, unpredicted]) is unpredicted
    assert AgentLayer([LeastRecentlyUsed()]).victim([predicted, unpredicted]) is predicted


@pytest.mark.parametrize("make_key", [
    lambda agent: None,                               # an unknown owner
    lambda agent: AgentKey("unseen", agent, "r"),     # a workload it never observed
    lambda agent: AgentKey(W, "", "r"),               # no agent name
    lambda agent: AgentKey(W, agent, "other-run"),    # a run it never observed
])
def test_cachesage_falls_back_to_recency_for_what_it_does_not_know(make_key: Any) -> None:
    sage = sage_after("ABABA")
    candidates = [Cached(make_key(agent), age) for agent, age in [("B", 3), ("C", 9), ("A", 1)]]
    scores = sage.keep_scores(candidates)
    assert scores == pytest.approx([math.exp(-0.1 * c.age) for c in candidates])
    lru = LeastRecentlyUsed().keep_scores(candidates)
    assert sorted(range(3), key=lambda i: scores[i]) == sorted(range(3), key=lambda i: lru[i])
    assert AgentLayer([sage]).victim(candidates).age == 9


def test_warmups_and_other_events_are_not_transitions() -> None:
    sage = sage_after("AB")
    before = dict(sage.model(W).successors), dict(sage.model(W).last)
    sage.observe(started("C", warmup=True))
    sage.observe(AgentEvent("prefetch", AgentKey(W, "C", "r"), data={"warmup": True}))
    sage.observe(AgentEvent("call_finished", AgentKey(W, "D", "r")))
    sage.observe(AgentEvent("slot_restored", AgentKey(W, "D", "r")))
    assert (dict(sage.model(W).successors), dict(sage.model(W).last)) == before
    assert sage.model(W).observations == 2
    fresh = CacheSage()
    fresh.observe(started("A", workload="cold", warmup=True))
    assert fresh.models.get("cold") is None or fresh.models["cold"].observations == 0


def test_the_end_of_a_run_clears_its_survival() -> None:
    sage = sage_after("ABABA")
    key = AgentKey(W, "B", "r")
    assert sage.survival(key) == 1.0
    sage.observe(ended("r", workload="another-workload"))  # another workload's run: kept
    assert sage.survival(key) == 1.0
    sage.observe(ended("r"))
    assert sage.survival(key) == 0.0
    assert sage.keep_scores([Cached(key, 5)]) == pytest.approx([math.exp(-0.5)])
    # the pool ends a run with no workload: every workload's run of that id ends
    sage = sage_after("ABABA")
    sage.observe(ended("r", workload=""))
    assert sage.survival(key) == 0.0
    assert sage.predict_next(AgentKey(W, "A", "r")) == {"B": 1.0}  # what it learned stays


def test_prefetch_names_the_likely_next_agent_only_when_likely_enough() -> None:
    sage = sage_after("ABABA")
    assert sage.prefetch(AgentKey(W, "A", "r")) == ["B"]
    assert sage.prefetch(AgentKey("unseen", "A", "r")) == []
    # A is followed by B, C, D, E once each: 0.25 below the default 0.3
    spread = CacheSage()
    for run, agent in enumerate("BCDE"):
        spread.observe(started("A", f"r{run}"))
        spread.observe(started(agent, f"r{run}"))
    assert spread.predict_next(AgentKey(W, "A", "x")) == pytest.approx(dict.fromkeys("BCDE", 0.25))
    assert spread.prefetch(AgentKey(W, "A", "x")) == []
    spread.prefetch_above = 0.25
    assert len(spread.prefetch(AgentKey(W, "A", "x"))) == 1
    # the most likely next agent is the agent itself: nothing to warm
    assert sage_after("AAAB").prefetch(AgentKey(W, "A", "r")) == []


def test_state_bytes_grow_with_agents_and_stay_bounded_by_the_window() -> None:
    small = sage_after("ABC" * 3)
    large = sage_after("ABCDEF" * 3)
    assert large.state_bytes()[W] > small.state_bytes()[W] > 0
    rng = random.Random(1)
    sage = CacheSage(window=8)
    for run in range(50):
        for _ in range(40):
            sage.observe(started(rng.choice("ABCDEF"), f"r{run}"))
        sage.observe(ended(f"r{run}"))
    model = sage.models[W]
    assert model.observations == 2000
    assert all(len(row) <= 8 for row in model.successors.values())
    assert sage.state_bytes()[W] <= 6 * 8 + 6
    assert model.last == {}  # ended runs are forgotten


# ---- the layer -------------------------------------------------------------------------------
class Raising(AgentPolicy):
    name = "raising"

    def __init__(self) -> None:
        self.calls = 0

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        self.calls += 1
        raise RuntimeError("scorer broke")


class KeepOldest(AgentPolicy):
    """Evicts the youngest: the opposite of LRU, so that it is told apart from the
    layer's own fallback."""

    name = "keep-oldest"

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        return [float(c.age) for c in candidates]


class ShortScores(AgentPolicy):
    name = "short"

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        return [1.0]


class BadObserver(AgentPolicy):
    name = "bad-observer"

    def observe(self, event: AgentEvent) -> None:
        raise KeyError(event.kind)

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        return [float(c.age) for c in candidates]


CANDIDATES = [Cached(None, 5, "mid"), Cached(None, 9, "old"), Cached(None, 1, "young")]


def test_a_policy_that_raises_is_switched_off_and_the_next_one_decides(
        caplog: pytest.LogCaptureFixture) -> None:
    raising = Raising()
    layer = AgentLayer([raising, KeepOldest()])
    with caplog.at_level(logging.WARNING, logger="orla_sdk.agents"):
        assert layer.victim(CANDIDATES).ref == "young"
    assert "raising" in layer.disabled and "scorer broke" in layer.disabled["raising"]
    assert [p.name for p in layer.policies] == ["keep-oldest"]
    assert any(r.name == "orla_sdk.agents" and r.levelno == logging.WARNING
               and "raising" in r.getMessage() for r in caplog.records)
    layer.victim(CANDIDATES)
    assert raising.calls == 1  # never asked again
    alone = AgentLayer([Raising()])
    assert alone.victim(CANDIDATES).ref == "old"  # no policy left: the oldest goes
    assert not alone and "raising" in alone.disabled


def test_a_policy_scoring_the_wrong_number_of_candidates_is_switched_off() -> None:
    layer = AgentLayer([ShortScores(), KeepOldest()])
    assert layer.victim(CANDIDATES).ref == "young"
    assert layer.disabled == {"short": "scored 1 of 3 candidates"}
    layer = AgentLayer([ShortScores()])
    assert layer.keep_scores(CANDIDATES) is None
    assert layer.victim(CANDIDATES).ref == "old"


def test_a_policy_whose_observe_raises_is_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    sage = CacheSage()
    layer = AgentLayer([BadObserver(), sage])
    with caplog.at_level(logging.WARNING, logger="orla_sdk.agents"):
        layer.observe(started("A"))
        layer.observe(started("B"))
    assert list(layer.disabled) == ["bad-observer"]
    assert "KeyError" in layer.disabled["bad-observer"]
    assert sage.predict_next(AgentKey(W, "A", "r")) == {"B": 1.0}  # the others still observe
    assert sum("bad-observer" in r.getMessage() for r in caplog.records) == 1
    assert layer.victim(CANDIDATES).ref == "old"  # CacheSage knows none of them: recency


def test_a_layer_whose_only_observer_is_switched_off_no_longer_observes() -> None:
    layer = AgentLayer([BadObserver(), SmallIncrement()])
    assert layer.observing
    layer.observe(started("A"))
    assert list(layer.disabled) == ["bad-observer"]
    assert not layer.observing  # callers stop building events nobody reads


def test_victim_needs_candidates_and_ties_go_to_the_oldest() -> None:
    with pytest.raises(ValueError):
        AgentLayer([LeastRecentlyUsed()]).victim([])
    with pytest.raises(ValueError):
        AgentLayer().victim([])

    class Flat(AgentPolicy):
        def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
            return [0.0] * len(candidates)

    assert AgentLayer([Flat()]).victim(CANDIDATES).ref == "old"
    assert AgentLayer().victim(CANDIDATES).ref == "old"


def test_predictions_come_from_the_first_policy_that_has_one_and_prefetches_merge() -> None:
    class Says(AgentPolicy):
        def __init__(self, *agents: str) -> None:
            self.agents = list(agents)

        def predict_next(self, key: AgentKey) -> dict[str, float]:
            return dict.fromkeys(self.agents, 1.0 / len(self.agents)) if self.agents else {}

        def prefetch(self, key: AgentKey) -> list[str]:
            return self.agents

    layer = AgentLayer([Says(), Says("B", "C"), Says("C", "D")])
    key = AgentKey(W, "A", "r")
    assert layer.predict_next(key) == {"B": 0.5, "C": 0.5}
    assert layer.prefetch(key) == ["B", "C", "D"]


# ---- the registry ------------------------------------------------------------------------------
class MyPolicy(AgentPolicy):
    name = "mine"


def test_policies_by_name() -> None:
    assert isinstance(policy_by_name("cachesage"), CacheSage)
    assert isinstance(policy_by_name("lru"), LeastRecentlyUsed)
    assert policy_by_name("cachesage") is not policy_by_name("cachesage")  # a fresh one each
    with pytest.raises(OrlaError, match="StepsToNext"):
        policy_by_name("kvflow")
    with pytest.raises(OrlaError, match="Belady"):
        policy_by_name("min")
    with pytest.raises(OrlaError, match="cachesage, fair, lru, memo, pin") as unknown:
        policy_by_name("nope")
    assert "'nope'" in str(unknown.value)
    with pytest.raises(OrlaError, match="not an AgentPolicy subclass"):
        policy_by_name("orla_sdk.agents.identity:AgentKey")
    with pytest.raises(OrlaError, match="not an AgentPolicy subclass"):
        policy_by_name("orla_sdk.agents.identity:fingerprint")
    with pytest.raises(OrlaError, match="cannot load"):
        policy_by_name("no_such_module_here:Policy")
    assert isinstance(policy_by_name(f"{MyPolicy.__module__}:MyPolicy"), MyPolicy)
    assert isinstance(policy_by_name("orla_sdk.agents.baselines:LeastRecentlyUsed"),
                      LeastRecentlyUsed)
    mine = MyPolicy()
    made = policies_from(["lru", mine, "cachesage"])
    assert [type(p) for p in made] == [LeastRecentlyUsed, MyPolicy, CacheSage] and made[1] is mine


# ---- fingerprints -----------------------------------------------------------------------------
def test_fingerprints_name_agents_by_their_first_message() -> None:
    system = {"role": "system", "content": "You are the reviewer. Check the code."}
    one = fingerprint([system, {"role": "user", "content": "first"}])
    two = fingerprint([system, {"role": "user", "content": "second"},
                       {"role": "assistant", "content": "more"}])
    assert one == two and one.startswith("fp-")
    other = fingerprint([{"role": "system", "content": "You are the planner. Plan the work."},
                         {"role": "user", "content": "first"}])
    assert other != one
    assert fingerprint([{"role": "user", "content": system["content"]}]) != one  # the role counts
    assert fingerprint([]) == ""
    parts = {"role": "system", "content": [{"type": "text", "text": "You are the reviewer. "},
                                           {"type": "text", "text": "Check the code."}]}
    assert fingerprint([parts]) == one


def test_skip_chars_leaves_a_shared_preamble_out() -> None:
    preamble = "Shared rules for every agent. " * 30  # 900 characters, past the 512 read
    a = [{"role": "system", "content": preamble + "You are the planner."}]
    b = [{"role": "system", "content": preamble + "You are the coder."}]
    assert fingerprint(a) == fingerprint(b)  # only the preamble is read
    assert fingerprint(a, skip_chars=len(preamble)) != fingerprint(b, skip_chars=len(preamble))
    c = [{"role": "system", "content": "Other preamble. " + "You are the planner."}]
    assert fingerprint(c, skip_chars=len("Other preamble. ")) == fingerprint(
        a, skip_chars=len(preamble))
    assert fingerprint(a, chars=10) == fingerprint(b, chars=10)


# ---- block eviction in the prefix cache ---------------------------------------------------------
BT = 4  # tokens a block


def prompt_of(agent: str, blocks: int = 2) -> list[str]:
    return [f"{agent}{i}" for i in range(blocks * BT)]


def one_call(cache: PrefixCache, layer: AgentLayer | None, agent: str, run: str) -> int:
    """An agent's call: observed, its blocks acquired, computed and released; returns the
    blocks it found cached."""
    key = AgentKey(W, agent, run)
    if layer is not None:
        layer.observe(AgentEvent("call_started", key))
    keys = cache.keys(prompt_of(agent), None)
    hits = cache.cached_prefix(keys)
    assert cache.acquire(keys, len(keys), None, key)
    cache.mark_computed(keys)
    cache.release(keys, keys, len(keys), None, key)
    return hits


def fill_after_a_pattern(idle: IdleOrder | None, layer: AgentLayer | None) -> PrefixCache:
    """Run r alternates A and B (so A is due next), then run r2's agents X and Y pass
    through a cache of 6 blocks; returns the cache."""
    cache = PrefixCache(6 * BT, BT, idle)
    for agent in "ABABAB":
        one_call(cache, layer, agent, "r")
    one_call(cache, layer, "X", "r2")
    assert cache.free() == 0
    one_call(cache, layer, "Y", "r2")  # needs 2 blocks: something idle goes
    return cache


def test_cachesage_keeps_the_blocks_of_the_agent_due_next_where_lru_evicts_them() -> None:
    a_keys = PrefixCache(6 * BT, BT).keys(prompt_of("A"), None)
    x_keys = PrefixCache(6 * BT, BT).keys(prompt_of("X"), None)
    lru = fill_after_a_pattern(None, None)
    explicit_lru = fill_after_a_pattern(LruOrder(), None)
    layer = AgentLayer([CacheSage()])
    order = ScoredOrder(layer)
    scored = fill_after_a_pattern(order, layer)
    assert lru.cached_prefix(a_keys) == explicit_lru.cached_prefix(a_keys) == 0
    assert lru.cached_prefix(x_keys) == 2
    assert scored.cached_prefix(a_keys) == 2
    assert scored.cached_prefix(x_keys) == 0  # the one-off agent went instead
    assert not layer.disabled
    assert one_call(scored, layer, "A", "r") == 2  # A comes back and finds its prompt
    assert one_call(lru, None, "A", "r") == 0


def test_lru_scored_order_evicts_like_the_default() -> None:
    a_keys = PrefixCache(6 * BT, BT).keys(prompt_of("A"), None)
    layer = AgentLayer([LeastRecentlyUsed()])
    cache = fill_after_a_pattern(ScoredOrder(layer), layer)
    assert cache.cached_prefix(a_keys) == 0


def test_an_empty_idle_order_given_is_the_one_used() -> None:
    layer = AgentLayer([CacheSage()])
    order = ScoredOrder(layer)
    assert len(order) == 0 and not order  # empty: falsy
    cache = PrefixCache(4 * BT, BT, order)
    keys = cache.keys(prompt_of("A"), None)
    assert cache.acquire(keys, len(keys), None, AgentKey(W, "A", "r"))
    cache.mark_computed(keys)
    cache.release(keys, keys, len(keys), None, AgentKey(W, "A", "r"))
    assert len(order) == 2 and all(k in order for k in keys)

    now = [0]
    future = FutureOrder({}, lambda: now[0])
    assert not future
    cache = PrefixCache(4 * BT, BT, future)
    assert cache.acquire(keys, len(keys), None)
    cache.mark_computed(keys)
    cache.release(keys, keys, len(keys), None)
    assert len(future) == 2 and set(future) == set(keys)


def test_scored_order_groups_blocks_by_agent_and_evicts_a_groups_oldest_first() -> None:
    class Prefers(AgentPolicy):
        def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
            return [0.0 if c.key is not None and c.key.agent == "B" else 1.0
                    for c in candidates]

    seen: list[list[Cached]] = []

    class Spy(Prefers):
        def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
            seen.append(list(candidates))
            return super().keep_scores(candidates)

    order = ScoredOrder(AgentLayer([Spy()]))
    a, b = AgentKey(W, "A", "r"), AgentKey(W, "B", "r")
    for key, owner in [(b"a1", a), (b"b1", b), (b"b2", b), (b"a2", a), (b"u1", None)]:
        order.add(key, owner)
    assert len(order) == 5 and b"b2" in order
    assert order.victim() == b"b1"  # B's group, its oldest block
    assert len(seen[0]) == 3  # one candidate a group: A, B and the unknown owner
    assert {c.key for c in seen[0]} == {a, b, None}
    order.remove(b"b1")
    assert order.victim() == b"b2"
    order.remove(b"b2")
    order.remove(b"b2")  # twice: no error
    assert order.victim() in {b"a1", b"u1"}
    assert sorted(order) == [b"a1", b"a2", b"u1"]


# ---- trace replay ----------------------------------------------------------------------------
AGENTS = ["Planner", "Coder", "Reviewer", "Tester"]


def synthetic_trace(sessions: int = 6, calls: int = 12, seed: int = 0) -> list[TraceCall]:
    """Agents mostly hand over in a cycle; each has its own system prompt, and a session's
    history grows call by call."""
    rng = random.Random(seed)
    out = []
    for s in range(sessions):
        agent = AGENTS[0]
        for step in range(calls):
            out.append(TraceCall(workload="w", session=f"s{s}", agent=agent, step=step,
                                 segments=[(f"w/system/{agent}", 48),
                                           (f"s{s}/history", 24 * (step + 1))],
                                 completion_tokens=8))
            nxt = AGENTS[(AGENTS.index(agent) + 1) % len(AGENTS)]
            agent = nxt if rng.random() < 0.8 else rng.choice(AGENTS)
    return out


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload.of(synthetic_trace())


def distinct_tokens(workload: Workload) -> int:
    return len({block for blocks in workload.blocks for block in blocks}) * BLOCK_TOKENS


def test_the_workload_keys_calls_by_agent_and_step(workload: Workload) -> None:
    assert len(workload.calls) == 72 and len(workload.sessions) == 6
    for group in workload.sessions:
        assert [workload.keys[i].step for i in group] == list(range(12))
        assert len({workload.keys[i].run for i in group}) == 1
    first = workload.sessions[0][0]
    assert workload.keys[first] == AgentKey("w", "Planner", "s0", 0)
    # a later call of an agent starts with its earlier prompt in the same session
    by_agent: dict[str, list[int]] = {}
    for i in workload.sessions[0]:
        by_agent.setdefault(workload.calls[i].agent, []).append(i)
    earlier, later = next(v for v in by_agent.values() if len(v) > 1)[:2]
    assert workload.blocks[later][:len(workload.blocks[earlier]) - 1] == \
        workload.blocks[earlier][:-1]
    key = workload.keys[earlier]
    assert workload.steps_to_next(key, key.step) == workload.keys[later].step - key.step


def test_belady_is_an_upper_bound_below_the_working_set(workload: Workload) -> None:
    total = distinct_tokens(workload)
    for concurrency in (1, 3):
        budget = workload.working_set(concurrency) // 2
        assert budget < total
        rates = {p: cache_replay(workload, p, budget, concurrency, prefetch=False).hit_rate
                 for p in POLICIES}
        assert all(0.0 <= r <= 1.0 for r in rates.values()), rates
        assert all(rates["min"] >= r for r in rates.values()), (concurrency, rates)
        assert rates["min"] > rates["lru"], rates  # the budget really binds
        with_prefetch = {p: cache_replay(workload, p, budget, concurrency) for p in POLICIES}
        assert all(0.0 <= r.hit_rate <= 1.0 for r in with_prefetch.values())
        assert with_prefetch["lru"].prefetched_tokens == 0


def test_every_policy_hits_alike_when_nothing_is_evicted(workload: Workload) -> None:
    total = distinct_tokens(workload)
    for concurrency in (1, 4):
        for prefetch in (False, True):
            results = [cache_replay(workload, p, total + 16 * BLOCK_TOKENS, concurrency,
                                    prefetch=prefetch) for p in POLICIES]
            assert len({r.hit_rate for r in results}) == 1, [r.hit_rate for r in results]
            assert len({r.prompt_tokens for r in results}) == 1
            assert results[0].prompt_tokens == sum(workload.prompt_tokens)
            assert 0.0 < results[0].hit_rate < 1.0


def test_cache_replay_counts_hits_from_the_workloads_blocks() -> None:
    """With room for everything nothing is evicted, so a call finds cached the leading
    blocks of its prompt that earlier calls brought (at least one prompt token is always
    computed): the hit rate follows from the workload's blocks alone."""
    block_tokens = BLOCK_TOKENS
    workload = Workload.of(synthetic_trace())
    order = list(interleave(workload.sessions, 1))
    seen: set[bytes] = set()
    cached = 0
    for i in order:
        blocks = workload.blocks[i]
        leading = next((n for n, b in enumerate(blocks) if b not in seen), len(blocks))
        cached += min(leading, (workload.prompt_tokens[i] - 1) // block_tokens) * block_tokens
        seen.update(blocks)
    expected = cached / sum(workload.prompt_tokens)
    result = cache_replay(workload, "lru", 10**6, 1, prefetch=False)
    assert result.cached_tokens == cached, (result.hit_rate, expected)


def test_a_cache_too_small_for_the_calls_in_flight_is_refused(workload: Workload) -> None:
    with pytest.raises(ValueError, match="give it more room"):
        cache_replay(workload, "lru", 4 * BLOCK_TOKENS, 3)
    with pytest.raises(ValueError, match="unknown policy"):
        cache_replay(workload, "fifo", 10_000, 1)


@pytest.mark.parametrize("concurrency", [1, 3, 100])
def test_interleave_keeps_each_sessions_order_and_every_call_once(concurrency: int) -> None:
    sessions = [list(range(start, start + length)) for start, length in
                zip(itertools.accumulate([0, 5, 1, 7, 3, 4]), [5, 1, 7, 3, 4, 6], strict=True)]
    order = list(interleave(sessions, concurrency))
    assert sorted(order) == list(range(sum(map(len, sessions))))
    for session in sessions:
        assert [i for i in order if i in session] == session
    if concurrency == 1:
        assert order == [i for s in sessions for i in s]
    else:  # the first round takes one call of each session in flight
        firsts = [s[0] for s in sessions[:concurrency]]
        assert order[:len(firsts)] == firsts


def test_interleave_keeps_at_most_concurrency_sessions_in_flight() -> None:
    sessions = [[10 * s + i for i in range(n)] for s, n in enumerate([3, 1, 4, 2, 5])]
    order = list(interleave(sessions, 2))
    session_of = {i: n for n, s in enumerate(sessions) for i in s}
    live: set[int] = set()
    done = {n: 0 for n in range(len(sessions))}
    for i in order:
        live.add(session_of[i])
        done[session_of[i]] += 1
        assert len(live) <= 2
        live = {n for n in live if done[n] < len(sessions[n])}


def test_engine_replay_counts_every_call_and_is_deterministic(workload: Workload) -> None:
    budget = distinct_tokens(workload) // 2
    for policy in ("lru", "cachesage", "kvflow"):
        first = engine_replay(workload, policy, budget, 3)
        again = engine_replay(workload, policy, budget, 3)
        assert first.calls == len(workload.calls) == len(first.ttft_s)
        assert 0.0 <= first.hit_rate <= 1.0
        assert all(t > 0 for t in first.ttft_s)
        assert first.prompt_tokens >= sum(workload.prompt_tokens)
        assert (first.ttft_s, first.cached_tokens, first.prompt_tokens, first.warmups,
                first.elapsed_s) == (again.ttft_s, again.cached_tokens, again.prompt_tokens,
                                     again.warmups, again.elapsed_s)
    cold = engine_replay(workload, "cachesage", budget, 3, prefetch=False)
    assert cold.warmups == 0 and cold.calls == len(workload.calls)


def test_engine_warmups_are_not_transitions() -> None:
    async def scenario() -> CacheSage:
        sage = CacheSage()
        engine = SimEngine("qwen3-4b", agent_policies=[sage])
        for agent, tokens in [("A", 8), ("B", 8), ("A", 1), ("C", 1)]:  # 1: warm-ups
            await engine.chat(ChatRequest(
                model="qwen3-4b", messages=[{"role": "user", "content": f"hello {agent}"}],
                agent=AgentKey(W, agent, "r"), params={"max_tokens": tokens}))
        await engine.aclose()
        return sage

    sage = asyncio.run(scenario())
    assert sage.model(W).next_probabilities("A") == {"B": 1.0}
    assert sage.model(W).next_probabilities("B") == {}
    assert sage.model(W).last == {"r": "B"}


# ---- slots lent by the pool ---------------------------------------------------------------------
Snapshot = dict[tuple[str, str], tuple[int, str]]  # holder -> (its slot, whose context)
HELD: list[Snapshot] = []
POOLS: list[orla.BackendPool] = []
TEXT = " ".join(f"Item {i} goes to shelf {i % 5}." for i in range(12))


def snapshot() -> None:
    """What the pool's slot table holds now: each holder's slot and the agent it is for
    (a holder is (run, "") for the run's own slot, else (run, the agent's context))."""
    table = POOLS[0].memory.tables["sim"]
    HELD.append({holder: (slot, table.keys[holder].agent if holder in table.keys else "")
                 for holder, slot in table.held.items()})


@orla.stage(model="light", agent="planner")
async def plan_work(task: str) -> str:
    answer = await orla.agenerate(f"You are the planner. {TEXT} Plan: {task}", max_tokens=4)
    snapshot()
    return answer


@orla.stage(model="light", agent="coder")
async def write_code(task: str, plan: str) -> str:
    answer = await orla.agenerate(f"You are the coder. {TEXT} Code: {task} {plan}",
                                  max_tokens=4)
    snapshot()
    return answer


@orla.stage(model="light", agent="reviewer")
async def review_code(task: str, code: str) -> str:
    answer = await orla.agenerate(f"You are the reviewer. {TEXT} Review: {task} {code}",
                                  max_tokens=4)
    snapshot()
    return answer


@orla.workflow
def pair(task: str) -> str:
    return write_code(task, plan_work(task))


@orla.workflow
def trio(task: str) -> str:
    return review_code(task, write_code(task, plan_work(task)))


@orla.stage(model="light")
async def first_part(task: str) -> str:
    answer = await orla.agenerate(f"{TEXT} First: {task}", max_tokens=4)
    snapshot()
    return answer


@orla.stage(model="light")
async def second_part(task: str, first: str) -> str:
    answer = await orla.agenerate(f"{TEXT} Second: {task} {first}", max_tokens=4)
    snapshot()
    return answer


@orla.workflow
def undeclared(task: str) -> str:
    return second_part(task, first_part(task))


def run_on_slots(workflow: Any, slots: int, policies: Sequence[AgentPolicy | str] = ()
                 ) -> tuple[orla.RunResult, orla.BackendPool, list[Snapshot]]:
    plan = orla.compile(workflow, backends=[orla.backends.simulator(
        "sim", "qwen3-4b", clock="virtual", cache_control="slots")],
        mapping={"light": "sim/qwen3-4b"})
    HELD.clear()
    engine = SimEngine("qwen3-4b", max_batch=slots, assign_slots=True)

    async def go() -> tuple[orla.RunResult, orla.BackendPool]:
        pool = orla.BackendPool(plan.backends, clients={"sim": engine}, policies=policies)
        POOLS[:] = [pool]
        async with pool:
            result = await orla.arun(plan, pool=pool, task="ship it")
            return result, pool

    try:
        result, pool = asyncio.run(go())
    finally:
        POOLS.clear()
    return result, pool, list(HELD)


def agents_held(snapshot: Snapshot, run: str) -> dict[str, int]:
    """The agent -> slot of the holders in a snapshot, each checked to be one of ``run``'s."""
    assert all(holder[0] == run for holder in snapshot), snapshot
    return {agent: slot for holder, (slot, agent) in snapshot.items()}


def test_declared_agents_hold_slots_of_their_own_within_a_run() -> None:
    result, pool, held = run_on_slots(pair, slots=2)
    assert result.ok, result.error
    run = result.run_id
    assert len(held) == 2
    assert list(agents_held(held[0], run)) == ["planner"]
    during_coder = agents_held(held[1], run)
    assert set(during_coder) == {"planner", "coder"}
    assert during_coder["planner"] != during_coder["coder"]
    assert all(holder[1] for holder in held[1])  # none is the run's own slot
    slots = [result.stage(node).calls[0].slot for node in ("plan_work", "write_code")]
    assert slots == [during_coder["planner"], during_coder["coder"]]
    assert [result.stage(n).agent for n in ("plan_work", "write_code")] == ["planner", "coder"]
    assert not pool.memory.tables["sim"].held  # the end of the run gave them back


def test_stages_without_a_declared_agent_share_the_runs_slot() -> None:
    result, _, held = run_on_slots(undeclared, slots=2)
    assert result.ok, result.error
    run = result.run_id
    assert [set(h) for h in held] == [{(run, "")}, {(run, "")}]
    slots = [result.stage(node).calls[0].slot for node in ("first_part", "second_part")]
    assert slots[0] == slots[1] is not None


def test_reports_and_spans_group_a_runs_calls_by_agent() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    result, _, _ = run_on_slots(trio, slots=2)
    mixed, _, _ = run_on_slots(undeclared, slots=2)
    report = orla.Report.of_runs([result, mixed])
    by_agent = report.by("agent")
    # declared agents by their names; undeclared stages by their own
    assert set(by_agent) == {"planner", "coder", "reviewer", "first_part", "second_part"}
    assert all(totals["calls"] == 1 for totals in by_agent.values())
    assert by_agent["coder"]["prompt_tokens"] == result.stage("write_code").prompt_tokens
    assert report.to_json(workflow="trio")["by_agent"].keys() == {"planner", "coder",
                                                                  "reviewer"}
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert report.export_spans(provider.get_tracer("test"), run_id=result.run_id) == 3
    spans = exporter.get_finished_spans()
    units = {s.attributes["orla.stage"]: s.attributes for s in spans if s.name.startswith(
        "orla.unit")}
    assert {stage: a["gen_ai.agent.name"] for stage, a in units.items()} == {
        "plan_work": "planner", "write_code": "coder", "review_code": "reviewer"}
    calls = [s for s in spans if s.name.startswith("chat")]
    assert sorted(s.attributes["orla.agent"] for s in calls) == ["coder", "planner",
                                                                  "reviewer"]


def test_a_policy_that_raises_does_not_fail_the_run(caplog: pytest.LogCaptureFixture) -> None:
    raising = Raising()
    with caplog.at_level(logging.WARNING, logger="orla_sdk.agents"):
        # three agents on two slots: the third needs a slot lent, which asks the policy
        result, pool, held = run_on_slots(trio, slots=2, policies=[raising, "lru"])
    assert result.ok, result.error
    assert raising.calls == 1 and "raising" in pool.agents.disabled
    assert [p.name for p in pool.agents.policies] == ["lru", "small-increment"]
    # the oldest, the planner's, was lent to the reviewer
    assert set(agents_held(held[-1], result.run_id)) == {"reviewer", "coder"}
    assert any(e["decision"] == "lend" for e in result.cache_log)
    assert any("raising" in r.getMessage() for r in caplog.records)


def test_a_policy_given_by_name_reaches_the_pools_layer() -> None:
    pool = orla.BackendPool([], policies=["cachesage"])
    assert [type(p) for p in pool.agents.policies] == [CacheSage, SmallIncrement]
    assert pool.memory.agents is pool.agents
    assert [type(p) for p in orla.BackendPool([]).agents.policies] == [LeastRecentlyUsed,
                                                                        SmallIncrement]
    with pytest.raises(OrlaError):
        orla.BackendPool([], policies=["kvflow"])


class FakeSavingSlots:
    """A slot engine that saves and restores, keeping what it did."""

    def __init__(self) -> None:
        self.erased: list[int] = []
        self.files: dict[str, int] = {}
        self.restored: list[tuple[int, str]] = []
        self.saves: list[str] = []

    async def erase(self, slot: int) -> int:
        self.erased.append(slot)
        return 0

    async def save(self, slot: int, filename: str) -> int:
        self.files[filename] = slot
        self.saves.append(filename)
        return 100

    async def restore(self, slot: int, filename: str) -> int:
        self.restored.append((slot, filename))
        return 100


class PredictsCoder(AgentPolicy):
    name = "predicts-coder"

    def prefetch(self, key: AgentKey) -> list[str]:
        return ["coder"] if key.agent != "coder" else []


def own_slot_options(key: AgentKey) -> dict[str, Any]:
    """The ``MemoryManager.pin`` options that give ``key`` a context (and slot) of its own
    within its run, whichever way this version of ``pin`` names that: by the request's
    prompt (a context per distinct prompt), by a named context, or ``own_slot``."""
    params = inspect.signature(MemoryManager.pin).parameters
    if "prompt" in params:
        return {"prompt": f"You are the {key.agent}. " + "Follow the brief. " * 4}
    if "context" in params:
        return {"context": f"ctx-{key.agent}"}
    return {"own_slot": True}


def holder_of_agent(memory: MemoryManager, backend: str, run: str, agent: str
                    ) -> tuple[str, str]:
    table = memory.tables[backend]
    (holder,) = [h for h, k in table.keys.items() if h[0] == run and k.agent == agent]
    return holder


def test_prefetch_restores_the_predicted_agents_saved_slot_into_a_free_one() -> None:
    coder, planner = AgentKey(W, "coder", "r"), AgentKey(W, "planner", "r")
    events: list[AgentEvent] = []

    class Recorder(AgentPolicy):
        def observe(self, event: AgentEvent) -> None:
            events.append(event)

    async def scenario() -> tuple[FakeSavingSlots, MemoryManager]:
        control = FakeSavingSlots()
        memory = MemoryManager(agents=AgentLayer([PredictsCoder(), LeastRecentlyUsed(),
                                                  Recorder()]))
        memory.add_slots("b", control, 2)
        async with memory.pin("r", "b", coder, **own_slot_options(coder)) as slot:
            assert slot == 0
        async with memory.pin("other", "b") as slot:
            assert slot == 1
        await memory.prefetch("b", planner)  # no free slot: nothing happens
        assert control.restored == []
        # every slot held: the least recently used holder, the coder's context, is lent
        async with memory.pin("r", "b", planner, **own_slot_options(planner)) as slot:
            assert slot == 0
        table = memory.tables["b"]
        assert table.held == {holder_of_agent(memory, "b", "r", "planner"): 0, ("other", ""): 1}
        assert list(table.saved) == [holder_of_agent(memory, "b", "r", "coder")]
        await memory.end_run("other")  # slot 1 is free again
        await memory.prefetch("b", planner)
        return control, memory

    control, memory = asyncio.run(scenario())
    (filename,) = control.files
    assert control.files[filename] == 0
    assert control.restored == [(1, filename)]
    table = memory.tables["b"]
    assert table.held == {holder_of_agent(memory, "b", "r", "planner"): 0,
                          holder_of_agent(memory, "b", "r", "coder"): 1}
    assert table.saved == {} and table.free == []
    log = memory.take_log("r")
    assert [e["decision"] for e in log] == ["lend", "restore"]
    assert "prefetch: coder predicted next" in log[1]["reason"]
    assert [(e.kind, e.key) for e in events] == [
        ("slot_saved", coder), ("slot_erased", AgentKey("", "", "other")),
        ("slot_restored", coder)]


def test_an_agents_next_run_starts_from_its_context_in_the_last_one() -> None:
    async def scenario() -> tuple[FakeSavingSlots, list[Any], list[Any], list[Any]]:
        control = FakeSavingSlots()
        memory = MemoryManager()
        memory.add_slots("b", control, 2)
        coder = AgentKey(W, "coder", "r1")
        async with memory.pin("r1", "b", coder, **own_slot_options(coder)) as slot:
            assert slot == 0
        async with memory.pin("r1", "b") as slot:  # the run's own slot: no agent, no template
            assert slot == 1
        ended = await memory.end_run("r1")
        assert sorted(memory.tables["b"].free) == [0, 1]
        tester = AgentKey(W, "tester", "r2")
        async with memory.pin("r2", "b", tester, **own_slot_options(tester)) as slot:
            assert slot == 1  # the slot holding no template: the coder's stays
        again = AgentKey(W, "coder", "r2")
        async with memory.pin("r2", "b", again, **own_slot_options(again)) as slot:
            assert slot == 0  # the slot holding its template: nothing to restore
        log = memory.take_log("r2")
        ended_again = await memory.end_run("r2")  # the coder's template is not saved again
        return control, ended, log, ended_again

    control, ended, log, ended_again = asyncio.run(scenario())
    template = next(name for name in control.files if "coder" in name)
    # the coder's template saved when r1 ended, not again when r2 did; the tester's then
    assert "template" in template and len(control.saves) == 2
    assert control.saves[0] == template and "tester" in control.saves[1]
    # r1's end: slot 0 is left holding the coder's template it was just saved as; the
    # run's own slot is erased
    assert control.erased == [1]
    assert sorted((e["decision"], e["action"]) for e in ended) == [
        ("flush", "erase slot 1 (0 tokens)"),
        ("keep", "save slot 0 as coder's template (100 tokens) and leave it there")]
    assert [e["decision"] for e in log] == ["restore"]
    assert "starts from its last run's" in log[0]["reason"]
    assert log[0]["action"].startswith("none: slot 0 holds coder's template already")
    # r2's end: the coder's template restored over its context, the tester's left as saved
    assert control.restored == [(0, template)]
    assert sorted((e["decision"], e["action"].split(" (")[0]) for e in ended_again) == [
        ("flush", "restore coder's template into slot 0"),
        ("keep", "save slot 1 as tester's template")]


def test_a_slot_left_with_a_template_is_taken_last_and_then_holds_it_no_more() -> None:
    async def scenario() -> tuple[FakeSavingSlots, list[Any]]:
        control = FakeSavingSlots()
        memory = MemoryManager()
        memory.add_slots("b", control, 1)
        first = AgentKey(W, "coder", "r1")
        async with memory.pin("r1", "b", first, **own_slot_options(first)):
            pass
        await memory.end_run("r1")  # slot 0 holds the coder's template
        async with memory.pin("r2", "b"):  # the only free slot: its template is lost
            pass
        await memory.end_run("r2")
        again = AgentKey(W, "coder", "r3")
        async with memory.pin("r3", "b", again, **own_slot_options(again)):
            pass
        return control, memory.take_log("r3")

    control, log = asyncio.run(scenario())
    (template,) = control.files
    assert control.erased == [0]  # r2's context, over the template
    assert control.restored == [(0, template)]  # so r3's coder starts from the file again
    assert [e["action"].split(" (")[0] for e in log] == [f"restore slot 0 from {template}"]


def test_a_template_that_cannot_be_restored_at_the_end_of_a_run_leaves_the_slot_erased(
        caplog: pytest.LogCaptureFixture) -> None:
    class FailingRestore(FakeSavingSlots):
        async def restore(self, slot: int, filename: str) -> int:
            raise BackendError("b", "the slot file is gone", retryable=False)

    async def scenario() -> tuple[FakeSavingSlots, list[Any], list[int]]:
        control = FailingRestore()
        memory = MemoryManager()
        memory.add_slots("b", control, 1)
        for run in ("r1", "r2"):
            key = AgentKey(W, "coder", run)
            async with memory.pin(run, "b", key, **own_slot_options(key)):
                pass
            ended = await memory.end_run(run)
        return control, ended, memory.tables["b"].free

    control, ended, free = asyncio.run(scenario())
    assert control.erased == [0] and free == [0]
    (entry,) = ended
    assert entry["decision"] == "flush"
    assert entry["action"].startswith("restore slot 0 from ")
    assert "failed (BackendError: " in entry["action"]
    assert entry["action"].endswith("; erase slot 0 (0 tokens)")
    assert "the slot file is gone" in caplog.text


def test_a_free_slot_is_taken_by_what_it_holds_first() -> None:
    table = SlotTable("b", FakeSavingSlots(), free=[2, 1, 0])
    table.primed = {1: (W, "coder"), 0: (W, "tester")}
    assert table.take_free((W, "tester")) == (0, True)  # its template, though free last
    assert table.take_free((W, "critic")) == (2, False)  # no template: one holding none
    assert table.take_free() == (1, False)  # only a template's left: taken, and forgotten
    assert table.free == [] and table.primed == {}


def test_a_template_saved_anew_while_another_is_restored_is_what_counts() -> None:
    class SlowRestore(ContentSlots):
        async def restore(self, slot: int, filename: str) -> int:
            content = self.files[filename]
            await gate.wait()  # the engine has read the file; its answer comes later
            self.slots[slot] = content
            return 1

    async def call(memory: MemoryManager, engine: ContentSlots, run: str) -> None:
        key = AgentKey(W, "coder", run)
        async with memory.pin(run, "b", key, **own_slot_options(key)) as slot:
            assert slot is not None
            engine.slots[slot] = f"{run}'s context"

    async def scenario() -> tuple[SlotTable, ContentSlots]:
        engine, memory = SlowRestore(2), MemoryManager()
        memory.add_slots("b", engine, 2)
        await call(memory, engine, "r0")
        await memory.end_run("r0")  # the coder's template: r0's context
        await call(memory, engine, "ra")
        await call(memory, engine, "rb")
        memory.tables["b"].ended[(W, "coder")] = TEMPLATE_EVERY - 1  # rb's end saves anew
        gate.clear()
        ending = asyncio.create_task(memory.end_run("ra"))  # restores r0's over ra's
        await asyncio.sleep(0)
        await memory.end_run("rb")
        gate.set()
        await ending
        return memory.tables["b"], engine

    gate = asyncio.Event()
    gate.set()
    table, engine = asyncio.run(scenario())
    (template,) = engine.files
    assert engine.files[template] == "rb's context"
    # only rb's slot counts as holding it; ra's got the template read before rb's save
    assert [(engine.slots[slot], agent) for slot, agent in table.primed.items()] == [
        ("rb's context", (W, "coder"))]


def test_a_call_the_engine_placed_itself_forgets_which_slots_hold_templates() -> None:
    async def scenario() -> SlotTable:
        memory = MemoryManager()
        memory.add_slots("b", FakeSavingSlots(), 1)
        key = AgentKey(W, "coder", "r1")
        first = memory.pin("r1", "b", key, **own_slot_options(key))
        assert await first.__aenter__() == 0
        unpinned = memory.pin("r2", "b")
        assert await unpinned.__aenter__() is None  # every slot busy: the engine chooses
        await first.__aexit__(None, None, None)
        await memory.end_run("r1")  # slot 0 left holding the coder's template
        assert memory.tables["b"].primed == {0: (W, "coder")}
        await unpinned.__aexit__(None, None, None)  # it may have run in slot 0
        return memory.tables["b"]

    assert asyncio.run(scenario()).primed == {}


class ContentSlots:
    """A slot engine that keeps what each slot and each saved file holds."""

    def __init__(self, slots: int) -> None:
        self.slots = [""] * slots
        self.files: dict[str, str] = {}

    async def erase(self, slot: int) -> int:
        await asyncio.sleep(0)  # answered a moment later, as over HTTP
        self.slots[slot] = ""
        return 0

    async def save(self, slot: int, filename: str) -> int:
        content = self.slots[slot]
        await asyncio.sleep(0)
        self.files[filename] = content
        return 1

    async def restore(self, slot: int, filename: str) -> int:
        content = self.files[filename]
        await asyncio.sleep(0)
        self.slots[slot] = content
        return 1

    async def forget(self, filename: str) -> bool:
        return self.files.pop(filename, None) is not None


Step = tuple[str, int, str]  # ("call" | "end" | "ends", run, agent ("" for the run's own)


@settings(max_examples=300, deadline=None)
@given(slots=st.integers(1, 3), steps=st.lists(
    st.tuples(st.sampled_from(["call", "call", "end", "ends"]), st.integers(0, 3),
              st.sampled_from(["coder", "tester", "critic", ""])), max_size=40))
def test_a_slot_said_to_hold_a_template_holds_one_of_that_agents(
        slots: int, steps: list[Step]) -> None:
    """Runs of several agents on fewer slots, calls and ends in any order, some ends at
    once ("ends": that run and the next), the engine answering each cache action a moment
    later: wherever orla skips a template's restore, the engine's slot holds that template
    as it is now, and no slot is both free and held."""
    engine = ContentSlots(slots)
    memory = MemoryManager()
    memory.add_slots("b", engine, slots)
    table = memory.tables["b"]

    def check() -> None:
        assert not set(table.free) & set(table.held.values())
        assert len(set(table.free)) == len(table.free) and set(table.primed) <= set(table.free)
        for slot, (workload, agent) in table.primed.items():
            assert engine.slots[slot] == engine.files[table.templates[(workload, agent)]]

    async def scenario() -> None:
        runs = [0, 0, 0, 0]  # each run index's current run, a new one after its end
        for kind, index, agent in steps:
            run = f"r{index}.{runs[index]}"
            if kind == "end":
                await memory.end_run(run)
                runs[index] += 1
            elif kind == "ends":
                other = (index + 1) % len(runs)
                await asyncio.gather(memory.end_run(run),
                                     memory.end_run(f"r{other}.{runs[other]}"))
                runs[index] += 1
                runs[other] += 1
            else:
                key = AgentKey(W, agent, run) if agent else None
                options = own_slot_options(key) if key else {}
                async with memory.pin(run, "b", key, **options) as slot:
                    for entry in memory.take_log(run):
                        unrestored = re.match(r"none: slot (\d+) holds .*\((.*)\)$",
                                              entry["action"])
                        if unrestored:
                            held, filename = int(unrestored[1]), unrestored[2]
                            assert held == slot
                            assert engine.slots[slot] == engine.files[filename]
                    if slot is not None:  # the call: the slot holds its prompt from now on
                        engine.slots[slot] = f"{run}:{agent}"
            check()

    asyncio.run(scenario())


def test_pool_end_run_ends_the_run_for_every_workload() -> None:
    sage = CacheSage()
    pool = orla.BackendPool([], policies=[sage])
    for agent in "ABAB":
        pool.agents.observe(started(agent, "run-1"))
    assert sage.survival(AgentKey(W, "A", "run-1")) == 1.0
    pool.end_run("run-1")
    assert sage.survival(AgentKey(W, "A", "run-1")) == 0.0
    assert sage.models[W].last == {}


def test_steps_to_next_keeps_the_agent_due_soonest_and_prefetches_those_due() -> None:
    due = {"A": 1, "B": 4, "C": None}
    policy = StepsToNext(lambda key: due[key.agent], prefetch_within=2,
                         agents=lambda key: list(due))
    candidates = [Cached(AgentKey(W, a, "r"), age) for a, age in [("A", 9), ("B", 1), ("C", 0)]]
    assert AgentLayer([policy]).victim(candidates).key == AgentKey(W, "C", "r")
    assert policy.keep_scores(candidates)[0] > policy.keep_scores(candidates)[1]
    assert policy.prefetch(AgentKey(W, "B", "r")) == ["A"]
    assert policy.prefetch(AgentKey(W, "A", "r")) == []  # itself is not warmed
