"""An interleaving explorer for one FileMap lookup racing one kernel update.

The kernel's update is the list of :class:`Store` steps the writer plans (the very list
``FileMapWriter.insert``/``remove`` apply); the reader is :func:`lookup_steps`, which
yields one :class:`Load` per memory access. An interleaving is then fully described by,
for each reader load, how many kernel stores had landed before it: a non-decreasing
*schedule*. Stores landing after the reader's last load cannot change its answer, so
enumerating schedules enumerates every distinguishable interleaving.

The explorer walks the schedules depth first. The reader is a generator, which cannot be
copied, so it is replayed from the start along the values it loaded (at most 18), and
replays are memoised on those values. Two modes:

- ``exhaustive=True``: every store count is tried before every load (all interleavings);
- default: for each load, only the first store count at which each *distinct value*
  of that location appears. Later counts reading the same value lead to a subset of the
  same futures (the reader's state is the same and it is more constrained), so the set
  of reachable answers is identical, with far fewer runs. A test checks both agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from servers.vfs.filemap import FILEMAP_SIZE, Load, Part, Store, Words, lookup_steps

Hit = tuple[int, Part]


@dataclass(frozen=True, slots=True)
class Run:
    """One explored interleaving: stores landed before each load, and the reader's answer."""

    schedule: tuple[int, ...]
    result: Hit | None


@dataclass(frozen=True, slots=True)
class _Pending:
    """The reader stopped at a load the schedule does not cover yet."""

    load: Load


def memory_states(initial: bytes, stores: Sequence[Store]) -> list[Words]:
    """The page after 0, 1, ..., len(stores) stores, as read-only typed views."""
    assert len(initial) == FILEMAP_SIZE
    page = bytearray(initial)
    writer = Words(page, writable=True)
    states = [Words(bytes(page))]
    for step in stores:
        writer.store(step)
        states.append(Words(bytes(page)))
    writer.release()
    return states


class _Reader:
    """The reader's next move as a function of the values it has loaded so far.

    The reader is deterministic, so its state after a prefix of loads depends only on the
    values those loads returned. Replays are memoised on that value sequence: many
    interleavings share it, and each then costs a dictionary lookup, not a replay.
    """

    def __init__(self, position: int) -> None:
        self._position = position
        self._memo: dict[tuple[int, ...], Hit | _Pending | None] = {}

    def after(self, values: tuple[int, ...]) -> Hit | _Pending | None:
        """The reader's answer, or the load it needs next, after loading ``values``."""
        try:
            return self._memo[values]
        except KeyError:
            outcome = self._memo[values] = self._replay(values)
            return outcome

    def _replay(self, values: tuple[int, ...]) -> Hit | _Pending | None:
        """Run a fresh reader fed with ``values``."""
        steps = lookup_steps(self._position)
        try:
            request = next(steps)
            for value in values:
                request = steps.send(value)
        except StopIteration as done:
            result: Hit | None = done.value
            return result
        steps.close()
        return _Pending(request)


def _choices(states: Sequence[Words], load: Load, earliest: int, exhaustive: bool) -> list[int]:
    """Store counts worth trying before ``load``, given ``earliest`` have landed already."""
    counts = range(earliest, len(states))
    if exhaustive:
        return list(counts)
    seen: set[int] = set()
    chosen: list[int] = []
    for landed in counts:
        value = states[landed].load(load.offset, load.width)
        if value not in seen:
            seen.add(value)
            chosen.append(landed)
    return chosen


def explore(
    initial: bytes, stores: Sequence[Store], position: int, *, exhaustive: bool = False
) -> Iterator[Run]:
    """Every answer a lookup of ``position`` can give while ``stores`` land one by one."""
    states = memory_states(initial, stores)
    reader = _Reader(position)
    stack: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())]
    try:
        while stack:
            schedule, values = stack.pop()
            outcome = reader.after(values)
            if not isinstance(outcome, _Pending):
                yield Run(schedule, outcome)
                continue
            load = outcome.load
            earliest = schedule[-1] if schedule else 0
            for landed in reversed(_choices(states, load, earliest, exhaustive)):
                value = states[landed].load(load.offset, load.width)
                stack.append(((*schedule, landed), (*values, value)))
    finally:
        for words in states:
            words.release()
