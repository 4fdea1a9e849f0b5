"""Lazy ordered writes: which held metadata pages must reach the disk before which (pure).

The FAT volume's write-order rules (docs/fat.md) say that some changes must be
durable before others are written. Instead of writing and flushing at every
such point, the FAT server keeps the changed pages (pinned in the cache, not yet
handed to it as dirty) and records, per page, which other pending pages must be
durable first. The pages and those edges form a DAG; writing it out goes level
by level (a *group*: the pages whose prerequisites are all in earlier groups),
with one device flush after each group. N creates in one directory then cost
as many flushes as the DAG is deep (two or three), not several per create.

A page is written whole or not at all (a power cut tears writes only at page
boundaries), so every pending change to one page lands together: a change to a
page already pending simply joins it, unless the change must come *after* a
page that itself waits for this one (a cycle, e.g. an unlink's free of a FAT
page whose earlier allocation a pending directory page waits for). Then
:meth:`WriteOrder.needs_first` names the pages to write out before the change
may touch the page (a forced, synchronous barrier). Correctness first.

*Foreign* pages are file data that the kernel file driver dirtied in the cache:
they have no prerequisites of their own (the cache may write them at any time),
but a size published over them must wait for them, so they join the DAG as
sources and are written (``Writeback``) with the first group.

No I/O here (h11 style): ``servers/fat/cacheio.py`` pins, marks dirty, writes back.
"""

from __future__ import annotations

from collections.abc import Iterable


class WriteOrder:
    """Pending pages, each with the pending pages it must follow."""

    def __init__(self) -> None:
        self._after: dict[int, set[int]] = {}  # pending page -> pending pages it follows
        self._foreign: set[int] = set()  # pending pages the file data driver owns

    # ------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._after)

    def __contains__(self, page: object) -> bool:
        return page in self._after

    def pending(self) -> list[int]:
        return sorted(self._after)

    def held(self) -> list[int]:
        """Pending pages that are ours (pinned, not yet dirty in the cache)."""
        return sorted(p for p in self._after if p not in self._foreign)

    def is_foreign(self, page: int) -> bool:
        return page in self._foreign

    def _ancestors(self, pages: Iterable[int]) -> set[int]:
        """``pages`` (those pending) and every pending page they follow, transitively."""
        todo = [p for p in pages if p in self._after]
        seen = set(todo)
        while todo:  # bounded: each pending page is visited once
            for q in self._after[todo.pop()]:
                if q not in seen:
                    seen.add(q)
                    todo.append(q)
        return seen

    def needs_first(self, page: int, after: Iterable[int]) -> set[int]:
        """Pages to write out before ``page`` may take a change that follows ``after``.

        Empty when the change can simply join the page: nothing in ``after``
        waits (transitively) for ``page``. Otherwise ``page`` and every page it
        follows: once those are durable, the change starts ``page`` afresh.
        """
        if page not in self._after:
            return set()
        others = [q for q in after if q != page]  # a page's own changes land together
        if page in self._ancestors(others):
            return self._ancestors([page])
        return set()

    # ------------------------------------------------------------ changes
    def change(self, page: int, after: Iterable[int]) -> None:
        """``page`` (ours) changed; the change must follow the pending pages in ``after``.

        The caller has written out :meth:`needs_first` before; a change that
        would close a cycle is refused rather than recorded wrongly.
        """
        follows = {q for q in after if q != page and q in self._after}
        if self.needs_first(page, follows):
            raise ValueError(f"page {page} would wait for itself: write out needs_first first")
        self._after.setdefault(page, set()).update(follows)
        self._foreign.discard(page)

    def foreign(self, page: int) -> None:
        """File data the caller's next changes must follow (written with the first group)."""
        if page not in self._after:
            self._after[page] = set()
            self._foreign.add(page)

    # ------------------------------------------------------------ writing out
    def plan(self, pages: Iterable[int] | None = None) -> list[list[int]]:
        """The groups that make ``pages`` (default: all) durable, in write order.

        Group k holds the pages all of whose prerequisites are in groups before
        k; the caller writes each group and flushes the device before the next.
        """
        todo = self._ancestors(self._after if pages is None else pages)
        groups: list[list[int]] = []
        done: set[int] = set()
        while todo:  # each round takes at least one page: the graph has no cycle
            ready = sorted(p for p in todo if self._after[p].issubset(done))
            if not ready:  # pragma: no cover - change() keeps the graph acyclic
                raise AssertionError("cycle among pending pages")
            groups.append(ready)
            done.update(ready)
            todo.difference_update(ready)
        return groups

    def written(self, pages: Iterable[int]) -> None:
        """These pages are durable (a group was written and flushed)."""
        gone = set(pages)
        for page in gone:
            self._after.pop(page, None)
            self._foreign.discard(page)
        for follows in self._after.values():
            follows.difference_update(gone)

    def drop_all(self) -> list[int]:
        """Forget everything pending (the volume stopped writing); the pages that were ours."""
        ours = self.held()
        self._after.clear()
        self._foreign.clear()
        return ours
