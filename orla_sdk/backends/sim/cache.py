"""The simulator's paged prefix KV cache (vLLM's prefix caching, with llama.cpp's slots
as separate key spaces) and llama.cpp's choice of a slot for a request that names none."""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

BLOCK_SEPARATOR = "\x1f"  # between a block's tokens in its hashed text


@dataclass
class _Block:
    refs: int
    slot: int | None
    computed: bool  # False until the step that prefills it ends
    owner: Hashable = None  # the agent whose request last used it (None: unknown)


class IdleOrder(Protocol):
    """The order unreferenced cached blocks are evicted in (``LruOrder`` by default; the
    agent layer's ``ScoredOrder`` for CacheSage and its baselines)."""

    def add(self, key: bytes, owner: Hashable) -> None:
        """``key`` is unreferenced now; it is the most recent."""

    def remove(self, key: bytes) -> None:
        """``key`` is referenced again or dropped."""

    def victim(self) -> bytes:
        """The next block to evict."""

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[bytes]: ...


class LruOrder:
    """Least recently used first (vLLM's free-block queue)."""

    def __init__(self) -> None:
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def add(self, key: bytes, owner: Hashable) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)

    def remove(self, key: bytes) -> None:
        self._keys.pop(key, None)

    def victim(self) -> bytes:
        return next(iter(self._keys))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)


class PrefixCache:
    """KV blocks of ``block_tokens`` tokens, at most ``capacity_tokens`` in all.

    A full block is keyed by a hash chain over the tokens up to and including it (vLLM's
    prefix caching), so equal keys mean equal prefixes. Blocks of running requests are
    referenced; a finished request's blocks stay cached, unreferenced, until evicted least
    recently used first, or in the order ``idle_order`` gives. Requests pinned to a slot
    key their blocks under that slot, so a slot sees only its own prefixes (llama.cpp's
    slots) and can be erased on its own.
    """

    def __init__(self, capacity_tokens: int, block_tokens: int,
                 idle_order: IdleOrder | None = None) -> None:
        self.block_tokens = block_tokens
        self.capacity = capacity_tokens // block_tokens
        self._blocks: dict[bytes, _Block] = {}
        self._idle: IdleOrder = LruOrder() if idle_order is None else idle_order
        self._private = 0  # blocks of running requests that hold no full, keyed block
        self._by_slot: dict[int, set[bytes]] = {}  # slot -> keys of its blocks

    def keys(self, tokens: list[str], slot: int | None,
             known: list[bytes] | None = None) -> list[bytes]:
        """The keys of the full blocks of ``tokens``; ``known``, the keys of a prefix of
        them already computed (for the same slot), is extended rather than hashed again."""
        size = self.block_tokens
        keys = list(known or ())
        parent = keys[-1] if keys else b"" if slot is None else f"slot {slot}".encode()
        for start in range(len(keys) * size, len(tokens) - size + 1, size):
            # unambiguous: the separator is a token only on its own, never inside one
            data = parent + BLOCK_SEPARATOR.join(tokens[start:start + size]).encode()
            parent = hashlib.blake2b(data, digest_size=16).digest()
            keys.append(parent)
        return keys

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def cached_prefix(self, keys: list[bytes]) -> int:
        """How many leading blocks of ``keys`` are cached and computed."""
        for i, key in enumerate(keys):
            block = self._blocks.get(key)
            if block is None or not block.computed:
                return i
        return len(keys)

    def mark_computed(self, keys: list[bytes]) -> None:
        for key in keys:
            self._blocks[key].computed = True

    def acquire(self, keys: list[bytes], blocks: int, slot: int | None,
                owner: Hashable = None) -> bool:
        """Reference the prompt's blocks and reserve ``blocks`` in all; False if they do not
        fit even after evicting every unreferenced block."""
        missing = pinned_idle = 0
        for key in keys:
            if key not in self._blocks:
                missing += 1
            elif key in self._idle:
                pinned_idle += 1
        needed = missing + blocks - len(keys)
        if needed > self.free() + len(self._idle) - pinned_idle:
            return False
        for key in keys:
            if key in self._blocks:
                self._reference(key, owner)
        self._make_room(needed)
        for key in keys:
            if key not in self._blocks:
                self._add(key, _Block(refs=1, slot=slot, computed=False, owner=owner))
        self._private += blocks - len(keys)
        return True

    def release(self, keys: list[bytes], sequence_keys: list[bytes], blocks: int,
                slot: int | None, owner: Hashable = None) -> None:
        """Give back a request's blocks; the full blocks of its reply join the cache."""
        private = blocks - len(keys)
        held = list(keys)
        for key in sequence_keys[len(keys):]:
            if private and key not in self._blocks:
                self._add(key, _Block(refs=1, slot=slot, computed=True, owner=owner))
                held.append(key)
                private -= 1
                self._private -= 1
        self._private -= private
        for key in reversed(held):  # the deepest block goes first when evicted
            block = self._blocks[key]
            block.refs -= 1
            if block.refs == 0:
                self._idle.add(key, block.owner)

    def drop_idle(self, slot: int | None = None, everything: bool = True) -> int:
        """Drop unreferenced blocks (all, or those of ``slot``); returns tokens dropped."""
        doomed = [key for key in (list(self._idle) if everything else self._slot_keys(slot))
                  if key in self._idle]
        for key in doomed:
            self._drop(key)
        return len(doomed) * self.block_tokens

    def keep_in_slot(self, slot: int, keys: list[bytes]) -> None:
        """A llama.cpp slot holds one sequence: when a prompt enters ``slot``, the slot's
        cached blocks off that prompt's prefix are dropped."""
        wanted = set(keys)
        doomed = [key for key in self._slot_keys(slot) if key in self._idle and key not in wanted]
        for key in doomed:
            self._drop(key)

    def insert_idle(self, keys: list[bytes], slot: int | None, owner: Hashable = None) -> int:
        """Cache blocks computed elsewhere (a restored slot file), unreferenced and most
        recently used, the deepest first to go; stops where no room is left. Returns the
        blocks now cached."""
        inserted = []
        for key in keys:
            if key not in self._blocks:
                if self.free() < 1 and not self._idle:
                    break
                self._make_room(1)
                self._add(key, _Block(refs=0, slot=slot, computed=True, owner=owner))
                self._idle.add(key, owner)
            inserted.append(key)
        for key in reversed(inserted):
            if key in self._idle:
                self._idle.remove(key)
                self._idle.add(key, self._blocks[key].owner)
        return len(inserted)

    def free(self) -> int:
        return self.capacity - len(self._blocks) - self._private

    def referenced(self) -> int:
        return len(self._blocks) - len(self._idle) + self._private

    def cached_idle(self) -> int:
        return len(self._idle)

    def _add(self, key: bytes, block: _Block) -> None:
        self._blocks[key] = block
        if block.slot is not None:
            self._by_slot.setdefault(block.slot, set()).add(key)

    def _drop(self, key: bytes) -> None:
        """Forget an unreferenced block."""
        self._idle.remove(key)
        block = self._blocks.pop(key)
        if block.slot is not None:
            self._by_slot[block.slot].discard(key)

    def _slot_keys(self, slot: int | None) -> set[bytes]:
        return self._by_slot.get(slot, set()) if slot is not None else set()

    def _reference(self, key: bytes, owner: Hashable) -> None:
        block = self._blocks[key]
        block.refs += 1
        if owner is not None:
            block.owner = owner
        self._idle.remove(key)

    def _make_room(self, blocks: int) -> None:
        while self.free() < blocks:
            self._drop(self._idle.victim())


SLOT_SIMILARITY = 0.1  # llama.cpp's --slot-prompt-similarity default


class SlotAssigner:
    """llama.cpp's choice of a slot for a request that names none: the idle slot whose
    last sequence shares the longest prefix with the prompt, if that prefix is over
    ``SLOT_SIMILARITY`` of the prompt; else the idle slot used least recently. Prefixes
    are compared block by block through their slot-free keys, then token by token."""

    def __init__(self, count: int, block_tokens: int) -> None:
        self.count = count
        self.block_tokens = block_tokens
        # slot -> its last sequence: slot-free block keys, and tokens
        self.last: dict[int, tuple[list[bytes], list[str]]] = {}
        self.used: dict[int, int] = {}  # slot -> when it was last given out
        self._clock = itertools.count()

    def pick(self, keys: list[bytes], tokens: list[str], busy: set[int]) -> int | None:
        idle = [slot for slot in range(self.count) if slot not in busy]
        if not idle:
            return None
        shared = {slot: self._shared(slot, keys, tokens) for slot in idle}
        best = max(idle, key=lambda slot: shared[slot])
        if shared[best] <= SLOT_SIMILARITY * len(tokens):
            best = min(idle, key=lambda slot: self.used.get(slot, -1))
        self.used[best] = next(self._clock)
        return best

    def _shared(self, slot: int, keys: list[bytes], tokens: list[str]) -> int:
        """Tokens of ``tokens`` that the slot's last sequence starts with."""
        last_keys, last_tokens = self.last.get(slot, ([], []))
        start = _common_prefix(last_keys, keys) * self.block_tokens
        end = start + self.block_tokens
        return start + _common_prefix(last_tokens[start:end], tokens[start:end])

    def remember(self, slot: int, keys: list[bytes], tokens: list[str]) -> None:
        self.last[slot] = (keys, tokens)

    def forget(self, slot: int) -> None:
        self.last.pop(slot, None)


def _common_prefix(a: list[Any], b: list[Any]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
