"""How a stage body runs, and how a sync body waits for work on the run's event loop.

An ``async def`` body is awaited on the loop. A plain ``def`` body runs on the loop's
thread too, in a greenlet of its own (one kept from an earlier body where there is one):
when it calls ``orla.generate`` the greenlet switches back to the loop, which awaits the
call (other stages run meanwhile) and switches back in with the answer. That costs a few
microseconds where a worker thread costs two cross-thread hand-offs per call (about 50 µs
on a small machine).

A body that holds the loop (it sleeps, waits on I/O outside orla, or computes) would
stall every other stage, so each stretch it runs between model calls is timed: a body
that waited more than ``BLOCKING_WAIT_S`` in one (time it did not spend computing) or
computed more than ``COMPUTING_S`` (the garbage collector's pauses aside) runs in the
pool's worker threads from then on, in this process, and the run says so in its
warnings. ``@orla.stage(blocking=True)``
sends a body to the threads from its first call. While a body runs in its greenlet the
loop is hidden from it, so it sees what it would see in a thread: no running loop
(``asyncio.run`` and a nested ``orla.run`` work, the latter as a blocking call).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import queue
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from greenlet import GreenletExit, greenlet

from orla_sdk.errors import OrlaError
from orla_sdk.loop_thread import wait_for
from orla_sdk.runtime.call import in_loop_thread
from orla_sdk.runtime.context import StageContext
from orla_sdk.runtime.off_loop import unheld

T = TypeVar("T")
R = TypeVar("R")
BLOCKING_WAIT_S = 0.02  # waiting, not computing, between model calls: it blocks
COMPUTING_S = 0.2  # computing that long between model calls holds the loop up too
SPARE_GREENLETS = 64  # body greenlets kept, a thread, for the bodies to come
_DONE = object()
_blocking: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


class _CollectorTime:
    """Seconds Python's cyclic garbage collector has run in this process (it runs on the
    loop's thread while a body's greenlet runs there, and its pauses are no body's work:
    long ones come with a large heap, under load)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


_collections = _CollectorTime()
gc.callbacks.append(_collections)


class _Finished:
    """What a body's greenlet hands the loop when the body is over: its value or what it
    raised (emptied by the taker: a greenlet kept for the next body still holds this)."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error = value, error

    def take(self) -> Any:
        value, error = self.value, self.error
        self.value = self.error = None
        if error is not None:
            raise error
        return value


class _BodyGreenlet(greenlet):
    """A greenlet that sync bodies run in, one after another; ``wait`` hands an awaitable
    to the loop. Each new greenlet maps a Python data stack of its own and unmaps it when
    it ends (about 7 µs a stage on a small machine), so one whose body is over is kept, up
    to ``SPARE_GREENLETS`` a thread, for the next body."""

    def __init__(self) -> None:
        super().__init__(_serve)
        self.job: Callable[[], Any] | None = None

    def wait(self, work: Awaitable[T]) -> T:
        assert self.parent is not None  # the loop's greenlet, which started this body
        return cast(T, self.parent.switch(work))

    def finish(self) -> _Finished:
        job, self.job = self.job, None
        assert job is not None
        try:
            return _Finished(job(), None)
        except GreenletExit:  # the greenlet itself is being collected
            raise
        except BaseException as exc:  # the body's: the loop raises it where it awaits
            return _Finished(None, exc)


def _serve() -> None:
    """A body greenlet's life: run its job, hand the loop what came of it, wait for the
    next. Nothing here refers to the greenlet while it waits (a method's ``self`` would):
    a waiting greenlet that refers to itself is never collected."""
    while True:
        body = cast(_BodyGreenlet, greenlet.getcurrent())
        finished, parent = body.finish(), cast(greenlet, body.parent)
        del body
        parent.switch(finished)
        del finished, parent


class _Spare(threading.local):
    """Each thread's kept body greenlets (a greenlet runs only on the thread it began on)."""

    def __init__(self) -> None:
        self.greenlets: list[_BodyGreenlet] = []


_spare = _Spare()


def _body_greenlet(job: Callable[[], Any]) -> _BodyGreenlet:
    """A greenlet for ``job``, a kept one where there is, its parent the caller's."""
    kept = _spare.greenlets
    body = kept.pop() if kept else _BodyGreenlet()
    body.parent = greenlet.getcurrent()
    body.job = job
    return body


def _keep(body: _BodyGreenlet) -> None:
    """Keep ``body``, whose body is over, for a later one (unless enough are kept)."""
    if len(_spare.greenlets) < SPARE_GREENLETS:
        _spare.greenlets.append(body)


@dataclass(frozen=True)
class Body:
    """A stage's function (the one under its ``@stage``) and how it runs."""

    fn: Callable[..., Any]
    is_async: bool
    blocking: bool  # declared @orla.stage(blocking=True)
    annotation: Any  # its return annotation, resolved (Any where there is none)

    @classmethod
    def of(cls, stage: Any) -> Body:
        fn = getattr(stage, "fn", stage)
        return cls(fn, asyncio.iscoroutinefunction(fn), getattr(stage, "blocking", False),
                   getattr(stage, "output_annotation", Any))

    def run(self, ctx: StageContext, args: list[Any], kwargs: dict[str, Any]
            ) -> Awaitable[Any]:
        """The body's run, to await with the stage context set (not a coroutine of its
        own: one frame fewer for each stage in flight)."""
        if self.is_async:
            return cast(Awaitable[Any], self.fn(*args, **kwargs))
        if self.blocking or self.fn in _blocking:
            return ctx.run.pool.in_body_thread(self.fn, *args, **kwargs)
        return _in_greenlet(ctx, self.fn, args, kwargs)


async def _in_greenlet(ctx: StageContext, fn: Callable[..., Any], args: list[Any],
                       kwargs: dict[str, Any]) -> Any:
    body = _body_greenlet(functools.partial(fn, *args, **kwargs))
    body.gr_context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    own_loop = None  # the body's running loop while it runs one of its own (asyncio.run)
    resume: Callable[[], Any] = body.switch
    while True:
        started, cpu_started = time.perf_counter(), time.thread_time()
        collected = _collections.seconds
        asyncio.events._set_running_loop(own_loop)
        try:
            asked = resume()
        finally:
            own_loop = asyncio.events._get_running_loop()
            asyncio.events._set_running_loop(loop)
            elapsed = time.perf_counter() - started
            if elapsed > min(BLOCKING_WAIT_S, COMPUTING_S):  # else it can be neither
                cpu = time.thread_time() - cpu_started  # a system call: only when it counts
                computed = cpu - (_collections.seconds - collected)  # not the collector's
                if elapsed - cpu > BLOCKING_WAIT_S or computed > COMPUTING_S:
                    _mark_blocking(ctx, fn, elapsed - cpu, computed)
        if isinstance(asked, _Finished):
            body.gr_context = None  # the body's context variables go with it
            _keep(body)
            return asked.take()
        try:
            resume = functools.partial(body.switch, await asked)
        except BaseException as exc:  # handed to the body, which may handle it
            resume = functools.partial(body.throw, exc)


def _mark_blocking(ctx: StageContext, fn: Callable[..., Any], waited_s: float,
                   computed_s: float) -> None:
    if fn in _blocking:
        return
    _blocking.add(fn)
    ctx.run.warnings.append(
        f"stage {ctx.spec.name!r}: its body held the event loop, waiting "
        f"{waited_s * 1000:.0f} ms (a sleep, I/O outside orla) and computing "
        f"{computed_s * 1000:.0f} ms between model calls, so it runs in a worker thread "
        "from now on; declare @orla.stage(..., blocking=True) to start it there.")


# ---- a sync body waits for the loop ------------------------------------------------------
def wait_on_loop(ctx: StageContext, work: Coroutine[Any, Any, T], *, fix: str) -> T:
    """``work``'s result, from a sync stage body: its greenlet switches to the loop, or its
    worker thread waits. ``fix`` says what an async body should call instead."""
    current = greenlet.getcurrent()
    if isinstance(current, _BodyGreenlet):
        return current.wait(work)
    if in_loop_thread(ctx):
        work.close()
        raise OrlaError(f"stage {ctx.spec.name!r} is async: {fix}")
    return wait_for(ctx.run.loop, unheld(work))


def future_on_loop(ctx: StageContext, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """``work`` run on the run's loop, as a future of the caller's own loop (an async
    client inside ``asyncio.run`` in a sync body). In a body's greenlet the run's loop
    waits for the body, so the body waits for ``work`` there, its own loop paused."""
    current = greenlet.getcurrent()
    if not isinstance(current, _BodyGreenlet):
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(unheld(work), ctx.run.loop))
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    try:
        future.set_result(current.wait(work))
    except Exception as exc:
        future.set_exception(exc)
    return future


def iterate_on_loop(ctx: StageContext,
                    produce: Callable[[Callable[[T], None]], Coroutine[Any, Any, R]], *,
                    fix: str) -> Generator[T, None, R]:
    """The items ``produce(put)`` puts, as they come, for a sync stage body; returns what
    ``produce`` returned, or raises what it raised."""
    current = greenlet.getcurrent()
    if isinstance(current, _BodyGreenlet):
        return (yield from _iterate_in_greenlet(ctx, current, produce))
    if in_loop_thread(ctx):
        raise OrlaError(f"stage {ctx.spec.name!r} is async: {fix}")
    return (yield from _iterate_in_thread(ctx, produce))


def _iterate_in_greenlet(ctx: StageContext, body: _BodyGreenlet,
                         produce: Callable[[Callable[[T], None]], Coroutine[Any, Any, R]]
                         ) -> Generator[T, None, R]:
    items: asyncio.Queue[Any] = asyncio.Queue()
    task = ctx.run.loop.create_task(_then(produce(items.put_nowait), items.put_nowait))
    try:
        while (item := body.wait(items.get())) is not _DONE:
            yield item
        return body.wait(task)
    finally:
        task.cancel()


def _iterate_in_thread(ctx: StageContext,
                       produce: Callable[[Callable[[T], None]], Coroutine[Any, Any, R]]
                       ) -> Generator[T, None, R]:
    items: queue.Queue[Any] = queue.Queue()
    future = asyncio.run_coroutine_threadsafe(unheld(_then(produce(items.put), items.put)),
                                              ctx.run.loop)
    try:
        while (item := items.get()) is not _DONE:
            yield item
        return future.result()
    finally:
        future.cancel()


async def _then(work: Coroutine[Any, Any, R], put: Callable[[Any], None]) -> R:
    """``work``'s result; ``put`` gets the end marker once it is over, whatever happened."""
    try:
        return await work
    finally:
        put(_DONE)


