"""Every interleaving of one kernel update with one lookup gives the right part or none.

Small maps (0..4 linked parts, indexes deliberately not in position order) meet every
insert rank and every removal, and a lookup of every interesting position (each part's
first and last byte, the byte after it, the gaps) runs against every interleaving of the
kernel's individual stores with the reader's individual loads. A removed part's entry
stays intact until its grace period is over, so a reader that picked its slot before the
removal may legitimately answer with it: "stale but valid". Anything else is a wrong
mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import pytest

from servers.vfs.filemap import (
    Part,
    Store,
    as_bytes,
    part_offset,
    run_lookup_steps,
)
from servers.vfs.filemap_writer import FileMapWriter, plan_insert
from tests.vfs.interleave import Hit, Run, explore

SPACING = 100
PART_LENGTH = 30


def base_for(position: int, size: int) -> int:
    """A base derived from the range, so a torn entry could never look legitimate."""
    return position * 8 + size


def existing_part(rank: int) -> Part:
    """The part at sorted rank ``rank`` of a test map: [100(r+1), +30)."""
    position = SPACING * (rank + 1)
    return Part(position, PART_LENGTH, base_for(position, PART_LENGTH))


def gap_part(rank: int, size: int = PART_LENGTH) -> Part:
    """A part that fits in the gap just before existing rank ``rank``."""
    position = SPACING * rank + 50
    return Part(position, size, base_for(position, size))


@dataclass
class Scenario:
    """A map before the update, the update's stores, and every legitimately readable part."""

    initial: bytes
    stores: list[Store]
    legit: dict[int, Part]
    before: list[Part]
    after: list[Part]


def build_map(count: int) -> tuple[bytearray, FileMapWriter, dict[int, Part]]:
    """A map with ``count`` parts inserted in a scrambled order (index != rank + 1)."""
    page = bytearray(4096)
    writer = FileMapWriter(page)
    linked: dict[int, Part] = {}
    for rank in sorted(range(count), key=lambda r: (r * 3) % max(count, 1), reverse=True):
        part = existing_part(rank)
        linked[writer.insert(*part)] = part
    return page, writer, linked


def insert_scenario(count: int, rank: int) -> Scenario:
    """Insert a new part at sorted rank ``rank`` of a ``count``-part map."""
    page, writer, linked = build_map(count)
    new = gap_part(rank)
    initial = as_bytes(page)
    index, stores = writer.insert_steps(*new)
    before = list(linked.values())
    return Scenario(initial, stores, {**linked, index: new}, before, [*before, new])


def remove_scenario(count: int, rank: int) -> Scenario:
    """Remove the part at sorted rank ``rank`` of a ``count``-part map."""
    page, writer, linked = build_map(count)
    initial = as_bytes(page)
    index = next(i for i, p in linked.items() if p == existing_part(rank))
    stores = writer.remove_steps(index)
    before = list(linked.values())
    return Scenario(
        initial, stores, dict(linked), before, [p for p in before if p != linked[index]]
    )


def replace_scenario(count: int, rank: int) -> Scenario:
    """Remove rank ``rank`` and link a larger part over the same range, under a new index."""
    page, writer, linked = build_map(count)
    initial = as_bytes(page)
    old_index = next(i for i, p in linked.items() if p == existing_part(rank))
    old = linked[old_index]
    stores = writer.remove_steps(old_index)
    new = Part(old.position, old.size + 20, base_for(old.position, old.size + 20))
    new_index, more = writer.insert_steps(*new)
    before = list(linked.values())
    after = [p for p in before if p != old] + [new]
    return Scenario(initial, stores + more, {**linked, new_index: new}, before, after)


def probe_positions(parts: Iterable[Part]) -> list[int]:
    """First byte, last byte and the byte after each part, plus both far ends."""
    points = {0, 10**9}
    for part in parts:
        points.update((part.position - 1, part.position, part.end - 1, part.end))
    return sorted(points)


def model(parts: Iterable[Part], position: int) -> Part | None:
    """What a quiescent lookup must answer."""
    return next((p for p in parts if p.contains(position)), None)


def check_runs(runs: Iterator[Run], legit: Mapping[int, Part], position: int) -> set[Part | None]:
    """Assert no run found a wrong mapping; return the set of answers seen."""
    answers: set[Part | None] = set()
    for run in runs:
        answers.add(None if run.result is None else run.result[1])
        assert _legitimate(run.result, legit, position), (
            f"wrong mapping for position {position}: {run.result} (schedule {run.schedule})"
        )
    return answers


def _legitimate(result: Hit | None, legit: Mapping[int, Part], position: int) -> bool:
    """None, or a part the index really held that really contains the position."""
    if result is None:
        return True
    index, part = result
    return legit.get(index) == part and part.contains(position)


def scenarios(max_count: int) -> Iterator[tuple[str, Scenario]]:
    """Every insert rank and every removal for maps of 0..max_count parts."""
    for count in range(max_count + 1):
        for rank in range(count + 1):
            yield f"insert n={count} rank={rank}", insert_scenario(count, rank)
        for rank in range(count):
            yield f"remove n={count} rank={rank}", remove_scenario(count, rank)


def cases(max_count: int) -> list[object]:
    """The scenarios as pytest parameters named after what they do."""
    return [pytest.param(scenario, id=name) for name, scenario in scenarios(max_count)]


def run_scenario(scenario: Scenario, *, exhaustive: bool) -> int:
    """Explore every probe of a scenario; returns the number of interleavings explored."""
    explored = 0
    for position in probe_positions(scenario.legit.values()):
        runs = list(explore(scenario.initial, scenario.stores, position, exhaustive=exhaustive))
        explored += len(runs)
        answers = check_runs(iter(runs), scenario.legit, position)
        # The reader running wholly before or wholly after the update is exact.
        assert model(scenario.before, position) in answers
        assert model(scenario.after, position) in answers
    return explored


@pytest.mark.parametrize("scenario", cases(6))
def test_single_update_never_maps_wrongly(scenario: Scenario) -> None:
    """Reduced exploration (all distinct observations) for maps of up to 6 parts."""
    assert run_scenario(scenario, exhaustive=False) > 0


@pytest.mark.parametrize("scenario", cases(3))
def test_exhaustive_interleavings_small_maps(scenario: Scenario) -> None:
    """Literally every interleaving for maps of up to 3 parts, agreeing with the reduction."""
    for position in probe_positions(scenario.legit.values()):
        full = list(explore(scenario.initial, scenario.stores, position, exhaustive=True))
        reduced = list(explore(scenario.initial, scenario.stores, position))
        assert len(full) >= len(reduced)
        full_answers = check_runs(iter(full), scenario.legit, position)
        assert full_answers == check_runs(iter(reduced), scenario.legit, position)


@pytest.mark.parametrize(("count", "rank"), [(n, r) for n in range(1, 4) for r in range(n)])
def test_remove_then_relink_same_range(count: int, rank: int) -> None:
    """Two updates racing one lookup: a part is unlinked and a larger one linked over it."""
    assert run_scenario(replace_scenario(count, rank), exhaustive=False) > 0


def test_removed_part_stays_readable_until_cleared() -> None:
    """A reader that picked the slot before the removal still reads the old, intact entry."""
    scenario = remove_scenario(3, 1)
    removed = existing_part(1)
    answers = check_runs(
        explore(scenario.initial, scenario.stores, removed.position + 1),
        scenario.legit,
        removed.position + 1,
    )
    assert answers == {removed, None}


def test_reader_agrees_with_fast_path_at_both_ends() -> None:
    """The step-wise reader and FileMapReader.find give the same answers on a quiet map."""
    page, _writer, linked = build_map(4)
    for position in probe_positions(linked.values()):
        stepped = run_lookup_steps(page, position)
        assert (None if stepped is None else stepped[1]) == model(linked.values(), position)


def test_explorer_catches_a_wrong_store_order() -> None:
    """The explorer has teeth: linking a slot before writing the entry is caught.

    The index being reused still holds an entry that was never cleared (its grace period
    was skipped), so a reader can meet the slot before the new entry lands and take the
    stale triple for the new index: a wrong mapping.
    """
    page, writer, linked = build_map(2)
    new = gap_part(1)
    index, _ = writer.insert_steps(*new)
    stale = Part(new.position, new.size + 5, 12345)
    page[part_offset(index) : part_offset(index) + 16] = stale.position.to_bytes(8, "little") + (
        stale.size.to_bytes(4, "little") + stale.base.to_bytes(4, "little")
    )
    order = [i for i, _ in sorted(linked.items(), key=lambda item: item[1].position)]
    stores = plan_insert(order, 1, index, new)
    wrong_order = stores[3:] + stores[:3]  # slots first, entry last
    legit = {**linked, index: new}
    position = new.position + 1
    results = [run.result for run in explore(as_bytes(page), wrong_order, position)]
    assert any(not _legitimate(result, legit, position) for result in results)
    results = [run.result for run in explore(as_bytes(page), stores, position)]
    assert all(_legitimate(result, legit, position) for result in results)
