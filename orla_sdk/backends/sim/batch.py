"""The running batch of a simulated engine: which requests prefill, which decode, and
when each is due to finish.

Every decoding request gains one token a step, so a request whose first token came out
at step ``s`` has generated ``k - s`` tokens when step ``k`` starts and finishes at the
end of step ``s + reply - 1``. Keeping those numbers (and the tokens the decoding
requests hold, summed) makes a step cost what its prefill chunks and its finishing
requests cost, not the size of the batch.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orla_sdk.backends.sim.engine import SimCall


class Batch:
    """The requests admitted to the engine, in the order they were admitted."""

    def __init__(self) -> None:
        self.step = 0  # the index of the step under way (steps ended so far)
        self._running: dict[SimCall, int] = {}  # call -> its admission number
        self._prefilling: dict[SimCall, None] = {}
        self._first_step: dict[SimCall, int] = {}  # decoding call -> step of its first token
        self._held_base = 0  # sum of (prompt length - first step) over decoding calls
        self._due: list[tuple[int, int, SimCall]] = []  # (last step, admission, call)
        self._gave_up: set[SimCall] = set()
        self._admissions = itertools.count()

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[SimCall]:
        return iter(list(self._running))

    def admit(self, call: SimCall) -> None:
        self._running[call] = next(self._admissions)
        self._prefilling[call] = None
        call.done.add_done_callback(lambda _: self._gave_up.add(call)
                                    if call in self._running else None)

    def prefilling(self) -> list[SimCall]:
        """The running requests whose prompts are not all in, in admission order."""
        return list(self._prefilling)

    def decoding(self) -> int:
        return len(self._first_step)

    def held_tokens(self) -> int:
        """Prompt and generated tokens of the decoding requests, as this step starts."""
        return self._held_base + len(self._first_step) * self.step

    def first_token(self, call: SimCall, reply_tokens: int) -> None:
        """``call``'s prompt is in: its first token comes out at the end of this step."""
        del self._prefilling[call]
        self._first_step[call] = self.step
        self._held_base += len(call.prompt) - self.step
        heapq.heappush(self._due, (self.step + reply_tokens - 1, self._running[call], call))

    def finishing(self) -> list[SimCall]:
        """The requests that end with this step (their reply is out, or their caller gave
        up), in admission order; the next step starts."""
        ending = {call for call in self._gave_up if call in self._running}
        self._gave_up.clear()
        while self._due and self._due[0][0] <= self.step:
            call = heapq.heappop(self._due)[2]
            if call in self._running:
                ending.add(call)
        self.step += 1
        return sorted(ending, key=self._running.__getitem__)

    def remove(self, call: SimCall) -> None:
        del self._running[call]
        self._prefilling.pop(call, None)
        first = self._first_step.pop(call, None)
        if first is not None:
            self._held_base -= len(call.prompt) - first

    def clear(self) -> None:
        for call in list(self._running):
            self.remove(call)
        self._due.clear()
        self._gave_up.clear()
