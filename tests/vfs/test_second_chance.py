"""Second-chance ageing: the transition table, victims, pressure, and the page scan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servers.vfs import second_chance as sc
from servers.vfs.pages import PAGE_SIZE, PartUsage, ProcessFilePage
from servers.vfs.second_chance import Victim, age_change, next_age, scan, second_chance


@pytest.mark.parametrize(
    ("touch", "change"), [(0, -1), (1, 1), (2, 2), (3, 2), (7, 2), (8, 3), (65535, 3)]
)
def test_transition_table(touch: int, change: int) -> None:
    """Untouched ages down; reads and writes age up, more for hot parts."""
    assert age_change(touch) == change


def test_transition_table_is_ordered_and_total() -> None:
    """Rows are by decreasing threshold and the last one catches zero."""
    thresholds = [threshold for threshold, _ in sc.TRANSITIONS]
    assert thresholds == sorted(thresholds, reverse=True)
    assert thresholds[-1] == 0
    with pytest.raises(ValueError):
        age_change(-1)


def test_a_new_part_gets_a_second_chance() -> None:
    """An untouched new part survives one scan and goes at the next."""
    first = second_chance({4: PartUsage(0, False)}, {})
    assert first.ages == {4: sc.AGE_INITIAL - 1} and first.victims == []
    second = second_chance({4: PartUsage(0, True)}, first.ages)
    assert second.ages == {} and second.victims == [Victim(4, True)]


def test_ages_are_capped_and_unlinked_parts_dropped() -> None:
    """Touched parts stop at AGE_MAX; ages of parts no longer linked are forgotten."""
    result = second_chance({1: PartUsage(50, False), 2: PartUsage(1, False)}, {1: 6, 2: 1, 3: 5})
    assert result.ages == {1: sc.AGE_MAX, 2: 2}
    assert result.victims == []


def test_pressure_adds_the_cheapest_survivors() -> None:
    """With ``need``, the youngest survivors go, clean before dirty."""
    usage = {
        1: PartUsage(0, False),
        2: PartUsage(0, True),
        3: PartUsage(0, False),
        4: PartUsage(9, False),
    }
    ages = {1: 1, 2: 3, 3: 3, 4: 1}
    result = second_chance(usage, ages, need=3)
    assert result.victims == [Victim(1, False), Victim(3, False), Victim(2, True)]
    assert result.ages == {4: 4}


@given(
    st.dictionaries(
        st.integers(1, 224), st.tuples(st.integers(0, 300), st.booleans()), max_size=30
    ),
    st.dictionaries(st.integers(1, 224), st.integers(1, sc.AGE_MAX), max_size=30),
    st.integers(0, 40),
)
def test_scan_properties(raw: dict[int, tuple[int, bool]], ages: dict[int, int], need: int) -> None:
    """Every linked part either survives with an age in 1..AGE_MAX or is a victim, never both."""
    usage = {index: PartUsage(*value) for index, value in raw.items()}
    result = second_chance(usage, ages, need=need)
    victims = {victim.index for victim in result.victims}
    assert victims.isdisjoint(result.ages)
    assert victims | set(result.ages) == set(usage)
    assert all(1 <= age <= sc.AGE_MAX for age in result.ages.values())
    assert len(victims) >= min(need, len(usage))
    assert all(victim.dirty == usage[victim.index].dirty for victim in result.victims)
    for index, age in result.ages.items():
        assert age == next_age(ages.get(index, sc.AGE_INITIAL), usage[index].touch) or need


def test_scan_takes_the_counters_from_the_page() -> None:
    """The scan zeroes the touch counters it read and leaves dirty flags for writeback."""
    page = ProcessFilePage(bytearray(PAGE_SIZE))
    page.note_read(1)
    page.note_write(2)
    result = scan(page, [1, 2, 3], {1: 3, 2: 3, 3: 1})
    assert result.ages == {1: 4, 2: 5}
    assert result.victims == [Victim(3, False)]
    assert (page.touch(1), page.touch(2)) == (0, 0)
    assert page.is_dirty(2)
