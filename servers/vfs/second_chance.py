"""Second-chance ageing of a process's mapped file parts (pure; the kernel runs it).

On a miss and about once a second the kernel file driver takes each linked part's touch
counter from the per-process file page (a read adds 1, a write adds 2) and moves the
part's age in its own table: touched parts age up to ``AGE_MAX``, untouched ones age down,
and a part whose age reaches zero is handed back to be unlinked from the FileMap. A part
that is dirty is flagged so the caller writes it back (after the FileMap grace period, so
that late writes through a stale lookup are included) before releasing its frames.

A freshly linked part starts at ``AGE_INITIAL``: it survives one idle scan (its second
chance) and goes at the next one unless the process touches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from servers.vfs.pages import PartUsage, ProcessFilePage

AGE_MAX: Final = 7
AGE_INITIAL: Final = 2

# Transition table: (lowest touch count since the last scan, change of age). The first
# row whose threshold the count reaches applies; counts are "reads + 2 * writes".
TRANSITIONS: Final[tuple[tuple[int, int], ...]] = (
    (8, +3),  # hot: several reads/writes per scan
    (2, +2),  # written once, or read twice
    (1, +1),  # read once
    (0, -1),  # untouched: one step closer to removal
)


@dataclass(frozen=True, slots=True)
class Victim:
    """A part to unlink; ``dirty`` parts must be written back before their frames go."""

    index: int
    dirty: bool


class ScanResult(NamedTuple):
    """The new age table (linked survivors only) and the parts to remove, by index."""

    ages: dict[int, int]
    victims: list[Victim]


def age_change(touch: int) -> int:
    """Change of age for a part touched ``touch`` times since the last scan."""
    for threshold, change in TRANSITIONS:
        if touch >= threshold:
            return change
    raise ValueError(f"touch count {touch} is negative")


def next_age(age: int, touch: int) -> int:
    """The part's age after one scan, kept within 0..AGE_MAX."""
    return max(0, min(AGE_MAX, age + age_change(touch)))


def second_chance(
    usage: Mapping[int, PartUsage], ages: Mapping[int, int], *, need: int = 0
) -> ScanResult:
    """Age every linked part in ``usage`` and pick the ones to remove.

    ``usage`` maps each linked part index to what the process did with it since the last
    scan; ``ages`` is the kernel's table (indexes missing from it start at AGE_INITIAL;
    indexes no longer linked are dropped). When fewer than ``need`` parts reach zero
    (the map is full and a miss needs room), the lowest-aged parts are added, clean
    before dirty, so the caller can always make the room it asked for.
    """
    new_ages: dict[int, int] = {}
    victims: list[Victim] = []
    for index in sorted(usage):
        touch, dirty = usage[index]
        age = next_age(ages.get(index, AGE_INITIAL), touch)
        if age == 0:
            victims.append(Victim(index, dirty))
        else:
            new_ages[index] = age
    if len(victims) < need:
        victims.extend(_extra_victims(new_ages, usage, need - len(victims)))
        for victim in victims:
            new_ages.pop(victim.index, None)
    return ScanResult(new_ages, victims)


def _extra_victims(
    ages: Mapping[int, int], usage: Mapping[int, PartUsage], count: int
) -> list[Victim]:
    """The ``count`` cheapest survivors to drop under pressure: youngest, then clean first."""
    order = sorted(ages, key=lambda index: (ages[index], usage[index].dirty, index))
    return [Victim(index, usage[index].dirty) for index in order[:count]]


def scan(
    page: ProcessFilePage, linked: Iterable[int], ages: Mapping[int, int], *, need: int = 0
) -> ScanResult:
    """Take (read and zero) the counters of the ``linked`` parts from ``page`` and age them."""
    return second_chance(page.take_usage(linked), ages, need=need)
