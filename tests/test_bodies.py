"""How stage bodies run: sync bodies on the loop's thread between model calls, in worker
threads once they block; what a body sees and may do either way."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from greenlet import greenlet

import orla_sdk as orla
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.errors import BackendError
from orla_sdk.ir import BackendSpec
from orla_sdk.loop_thread import LoopThread, wait_for
from orla_sdk.runtime import bodies
from orla_sdk.runtime.pool import in_thread
from tests.test_tool_calls import tick_until, watched_sleep


class Gate:
    """A backend whose calls wait until ``wanted`` of them are in flight at once (so a run
    finishes only if its stages' calls overlap), then answer with the prompt's words
    counted; a prompt starting with "fail" gets an engine error."""

    def __init__(self, wanted: int = 1) -> None:
        self.spec = BackendSpec(name="gate", kind="openai", url="http://127.0.0.1:9/v1")
        self.wanted, self.in_flight, self.most = wanted, 0, 0
        self.open = asyncio.Event()
        self.threads: list[str] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.wanted:
            self.open.set()
        try:
            await asyncio.wait_for(self.open.wait(), 5)
        finally:
            self.in_flight -= 1
        text = str(request.messages[-1]["content"])
        if text.startswith("fail"):
            raise BackendError("gate", "engine down", retryable=False)
        return ChatResult(content=f"{len(text.split())} words", tool_calls=[],
                          finish_reason="stop", prompt_tokens=3, completion_tokens=2,
                          cached_tokens=0, ttft_s=0.0, duration_s=0.0)

    async def aclose(self) -> None:
        return None


def run_on(wf: Any, backend: Gate, **inputs: Any) -> orla.RunResult:
    plan = orla.compile(wf, backends=[backend.spec], mapping={"m": "gate/model"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"gate": backend}) as pool:
            return await orla.arun(plan, pool=pool, **inputs)

    return asyncio.run(go())


# ---- sync bodies between their model calls ----------------------------------------------
@orla.stage(model="m")
def ask_twice(text: str) -> str:
    first = orla.generate(f"one {text}")
    return first + " / " + orla.generate(f"two {text} {first}")


@orla.workflow
def two_sides(left: str, right: str) -> list[str]:
    return [ask_twice(left), ask_twice(right)]


def test_sync_bodies_of_independent_stages_have_their_calls_in_flight_together() -> None:
    backend = Gate(wanted=2)  # a call waits for the other side's: serial bodies would stall
    result = run_on(two_sides, backend, left="a b", right="c")
    assert result.ok, result.error
    assert result.output == ["3 words / 5 words", "2 words / 4 words"]
    assert backend.most == 2 and not result.warnings


@orla.stage(model="m")
def where_am_i(text: str) -> str:
    try:
        asyncio.get_running_loop()
        loop = "a running loop"
    except RuntimeError:
        loop = "no running loop"
    return f"{orla.generate(text)} {threading.current_thread().name} {loop}"


@orla.workflow
def locate(text: str) -> str:
    return where_am_i(text)


def test_a_sync_body_runs_on_the_loops_thread_and_sees_no_running_loop() -> None:
    result = run_on(locate, Gate(), text="hello there")
    assert result.ok, result.error
    assert result.output == f"2 words {threading.current_thread().name} no running loop"


@orla.stage(model="m")
def own_event_loop(text: str) -> str:
    async def shout() -> str:
        await asyncio.sleep(0)
        return text.upper()

    return orla.generate(asyncio.run(shout()))  # agent code with a loop of its own


@orla.workflow
def nested_loop(text: str) -> str:
    return own_event_loop(text)


def test_a_sync_body_may_run_an_event_loop_of_its_own() -> None:
    result = run_on(nested_loop, Gate(), text="x y z")
    assert result.ok, result.error
    assert result.output == "3 words"


@orla.stage(model="m")
def careful(text: str) -> str:
    try:
        return orla.generate(f"fail {text}")
    except BackendError as exc:
        return f"handled: {exc.backend}; then {orla.generate(text)}"


@orla.workflow
def recovers(text: str) -> str:
    return careful(text)


def test_a_failed_call_is_raised_inside_the_body_which_may_handle_it() -> None:
    result = run_on(recovers, Gate(), text="just this")
    assert result.ok, result.error
    assert result.output == "handled: gate; then 2 words"


# ---- bodies that block ------------------------------------------------------------------
SLEEP_S = 3 * bodies.BLOCKING_WAIT_S


@orla.stage(model="m")
def sleepy(text: str) -> str:
    time.sleep(SLEEP_S)  # a blocking call outside orla
    return f"{orla.generate(text)} in {threading.current_thread().name}"


@orla.workflow
def slow_then_fast(text: str) -> str:
    return sleepy(text)


def test_a_body_that_holds_the_loop_moves_to_a_worker_thread_and_says_so() -> None:
    first = run_on(slow_then_fast, Gate(), text="a b")
    assert first.ok, first.error
    assert first.output == f"2 words in {threading.current_thread().name}"
    assert any("'sleepy'" in w and "blocking=True" in w for w in first.warnings)
    second = run_on(slow_then_fast, Gate(), text="a b")
    assert second.ok and second.output.startswith("2 words in orla-body")
    assert not second.warnings


@orla.stage(model="m", blocking=True)
def declared_blocking(text: str) -> str:
    return f"{orla.generate(text)} in {threading.current_thread().name}"


@orla.workflow
def declared(text: str) -> str:
    return declared_blocking(text)


def test_a_body_declared_blocking_runs_in_a_worker_thread_from_its_first_call() -> None:
    result = run_on(declared, Gate(), text="a")
    assert result.ok and result.output.startswith("1 words in orla-body")


# ---- failures around a body ---------------------------------------------------------------
FINALLY_RAN: list[str] = []


@orla.stage(model="m")
def waits_long(text: str) -> str:
    try:
        return orla.generate(text)  # never answered: the gate wants two calls
    finally:
        FINALLY_RAN.append(text)


@orla.stage(model="m")
def fails_now(text: str) -> str:
    raise ValueError(f"bad input {text!r}")


@orla.workflow
def one_fails(text: str) -> list[str]:
    return [waits_long(text), fails_now(text)]


def test_a_failing_stage_cancels_a_waiting_sync_body_whose_cleanup_runs() -> None:
    FINALLY_RAN.clear()
    result = run_on(one_fails, Gate(wanted=2), text="t")
    assert not result.ok and "bad input 't'" in (result.error or "")
    assert FINALLY_RAN == ["t"]
    assert result.stage("waits_long").status == "failed"


@pytest.mark.parametrize("body", ["generate", "stream"])
def test_sync_calls_in_an_async_body_are_refused_with_the_fix(body: str) -> None:
    @orla.stage(model="m", name=f"async_{body}")
    async def misuse(text: str) -> str:
        if body == "generate":
            return orla.generate(text)
        return "".join(orla.stream(text))

    @orla.workflow
    def wrong(text: str) -> str:
        return misuse(text)

    result = run_on(wrong, Gate(), text="a")
    assert not result.ok and "is async" in (result.error or "")
    assert ("orla.agenerate" if body == "generate" else "orla.astream") in (result.error or "")


# ---- a plan changed after it ran ----------------------------------------------------------
@orla.stage(model="m")
def count_words(text: str) -> str:
    return orla.generate(text)


@orla.workflow
def two_counts(first: str, second: str) -> list[str]:
    return [count_words(first), count_words(second)]


def test_a_plan_edited_after_a_run_runs_as_edited() -> None:
    backend = Gate()
    plan = orla.compile(two_counts, backends=[backend.spec], mapping={"m": "gate/model"})

    def run(**inputs: str) -> Any:
        async def go() -> orla.RunResult:
            async with orla.BackendPool(plan.backends, clients={"gate": backend}) as pool:
                return await orla.arun(plan, pool=pool, **inputs)
        return asyncio.run(go()).raise_for_error().output

    assert run(first="a b c", second="d e f g") == ["3 words", "4 words"]
    second_input = next(n.id for n in plan.nodes if n.label == "second")
    first_stage, second_stage = plan.stage_nodes()
    assert second_stage.args[0] == {"$ref": second_input}
    second_stage.args[0]["$ref"] = first_stage.id  # edited in place: now it waits for it
    assert run(first="a b c", second="d e f g") == ["3 words", "2 words"]


def test_a_body_on_a_worker_thread_holds_the_virtual_clock_only_while_it_runs() -> None:
    clock = VirtualClock()
    seen: list[float] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            await asyncio.gather(in_thread(executor, clock, watched_sleep(clock, seen)),
                                 tick_until(clock, 100.0))

    asyncio.run(scenario())
    assert seen[0] == seen[1] < 100.0 <= clock.now()


@orla.stage(model="m", blocking=True)
def blocking_ask(text: str) -> str:
    return orla.generate(text, max_tokens=4)


@orla.workflow
def one_blocking_ask(text: str = "a b") -> str:
    return blocking_ask(text)


def test_more_blocking_bodies_than_body_threads_all_finish_on_the_virtual_clock() -> None:
    plan = orla.compile(one_blocking_ask,
                        backends=[orla.backends.simulator("sim", clock="virtual")],
                        mapping={"m": "sim/qwen3-8b"})

    async def scenario() -> list[orla.RunResult]:
        async with orla.BackendPool(plan.backends, body_threads=2) as pool:
            return await asyncio.wait_for(asyncio.gather(
                *(orla.arun(plan, pool=pool, text=f"ask {i}") for i in range(8))), 30)

    assert all(result.ok for result in asyncio.run(scenario()))


HEAP: list[Any] = []


@orla.stage(model="m")
def collects(text: str) -> str:
    gc.collect()  # over a large heap: a long pause that is the collector's, not the body's
    return orla.generate(text)


@orla.workflow
def collecting(text: str) -> str:
    return collects(text)


def test_a_garbage_collection_does_not_send_a_body_to_the_worker_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "COMPUTING_S", 0.002)
    HEAP.extend([x] for x in range(400_000))  # several times COMPUTING_S to walk
    started = time.thread_time()
    gc.collect()
    assert time.thread_time() - started > 2 * bodies.COMPUTING_S
    try:
        result = run_on(collecting, Gate(), text="a b")
    finally:
        HEAP.clear()
    assert result.ok and not result.warnings


# ---- the greenlets sync bodies run in ---------------------------------------------------
LAST_VALUES: list[weakref.ref[Any]] = []
BODY_GREENLETS: list[greenlet] = []
LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="unset")


class Draft:
    def __init__(self, text: str) -> None:
        self.text = text


@orla.stage(model="m")
def draft(text: str) -> Draft:
    LABEL.set("set by draft")
    BODY_GREENLETS.append(greenlet.getcurrent())
    return Draft(orla.generate(text))


@orla.stage(model="m")
def polish(made: Draft) -> Draft:
    BODY_GREENLETS.append(greenlet.getcurrent())
    polished = Draft(f"{orla.generate(made.text)}; label {LABEL.get()}")
    LAST_VALUES.append(weakref.ref(polished))
    return polished


@orla.workflow
def draft_then_polish(text: str) -> Draft:
    return polish(draft(text))


def test_a_body_greenlet_serves_the_next_body_with_nothing_of_the_last() -> None:
    BODY_GREENLETS.clear()
    LAST_VALUES.clear()
    result = run_on(draft_then_polish, Gate(), text="a b c")
    assert result.ok, result.error
    assert result.output.text == "2 words; label unset"  # draft's context stayed draft's
    first, second = BODY_GREENLETS
    assert first is second  # kept, not made anew
    del result
    gc.collect()
    assert LAST_VALUES[0]() is None  # the kept greenlet holds no value of a finished body


@orla.stage(model="m")
def refuses(text: str) -> str:
    BODY_GREENLETS.append(greenlet.getcurrent())
    orla.generate(text)
    raise KeyError(f"no such ticket {text!r}")


@orla.workflow
def refusal(text: str) -> str:
    return refuses(text)


def test_a_body_that_raises_fails_its_stage_and_its_greenlet_serves_the_next() -> None:
    BODY_GREENLETS.clear()
    failed = run_on(refusal, Gate(), text="t-1")
    assert not failed.ok and "no such ticket 't-1'" in (failed.error or "")
    assert failed.stage("refuses").error == "KeyError: \"no such ticket 't-1'\""
    result = run_on(draft_then_polish, Gate(), text="x")
    assert result.ok, result.error
    assert all(body is BODY_GREENLETS[0] for body in BODY_GREENLETS)


@orla.workflow
def many_at_once(texts: list[str]) -> list[str]:
    return [ask_twice(t) for t in texts]


def body_greenlets() -> int:
    gc.collect()
    return sum(isinstance(o, bodies._BodyGreenlet) for o in gc.get_objects())


def test_bodies_in_flight_together_each_get_a_greenlet_and_the_unkept_are_freed() -> None:
    count = bodies.SPARE_GREENLETS + 36
    texts = [f"t{i}" for i in range(count)]
    before = body_greenlets()
    for _ in range(3):
        result = run_on(many_at_once, Gate(), texts=texts)  # all wait in the queue at once
        assert result.ok, result.error
        assert result.output == ["2 words / 4 words"] * count
    assert len(bodies._spare.greenlets) == bodies.SPARE_GREENLETS
    assert body_greenlets() <= before + bodies.SPARE_GREENLETS  # the unkept were freed


def test_a_loop_on_another_thread_never_gets_this_threads_kept_greenlets() -> None:
    assert run_on(two_sides, Gate(wanted=2), left="a", right="b").ok  # some kept here
    assert bodies._spare.greenlets
    before = body_greenlets()
    with ThreadPoolExecutor(1) as thread:  # a greenlet cannot be switched to elsewhere
        result = thread.submit(run_on, two_sides, Gate(wanted=2), left="a", right="b c")
        assert result.result().output == ["2 words / 4 words", "3 words / 5 words"]
    assert body_greenlets() == before  # what the ended thread kept was freed with it


# ---- a thread waiting for the loop ---------------------------------------------------------
def test_a_thread_waiting_for_the_loop_gets_its_value_error_and_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")
    loop_thread = LoopThread("wait-test")
    loop = loop_thread.start()
    try:
        async def seen() -> tuple[str, bool]:
            await asyncio.sleep(0)
            return var.get(), asyncio.get_running_loop() is loop

        async def fails() -> None:
            await asyncio.sleep(0)
            raise BackendError("b", "refused", retryable=False)

        var.set("caller's")
        assert wait_for(loop, seen()) == ("caller's", True)
        with pytest.raises(BackendError, match="refused"):
            wait_for(loop, fails())
        with ThreadPoolExecutor(4) as threads:  # many threads waiting at once
            results = list(threads.map(lambda i: wait_for(loop, echo(i)), range(64)))
        assert results == list(range(64))
    finally:
        loop_thread.stop()


async def echo(value: int) -> int:
    await asyncio.sleep(0.001)
    return value


def test_a_thread_waiting_for_a_loop_that_stops_is_told_it_was_cancelled() -> None:
    loop_thread = LoopThread("wait-test")
    loop = loop_thread.start()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    def stop_once_started() -> None:
        started.wait(5)
        loop_thread.stop()

    stopper = threading.Thread(target=stop_once_started)
    stopper.start()
    with pytest.raises(concurrent.futures.CancelledError):
        wait_for(loop, forever())
    stopper.join()
    work = forever()
    with pytest.raises(RuntimeError, match="closed"):
        wait_for(loop, work)
    assert work.cr_frame is None  # closed, not left to warn that it was never awaited


def test_a_thread_waiting_for_work_cancelled_before_it_began_is_told_so() -> None:
    loop_thread = LoopThread("wait-test")
    loop = loop_thread.start()
    busy = threading.Event()
    loop.call_soon_threadsafe(busy.wait)  # the loop waits: what follows queues up behind it
    cancel_all = asyncio.run_coroutine_threadsafe(cancel_other_tasks(), loop)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            wait_for(loop, echo(1))
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)  # so a hang fails, not blocks, the tests
    waiter.start()
    time.sleep(0.2)  # its task is queued behind the cancelling one, not begun
    busy.set()
    waiter.join(5)
    cancel_all.result(5)
    loop_thread.stop()
    assert not waiter.is_alive()
    assert [type(exc) for exc in outcome] == [concurrent.futures.CancelledError]


async def cancel_other_tasks() -> None:
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
