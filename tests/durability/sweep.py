"""A longer power-cut sweep: ``python3 -m tests.durability.sweep --seeds 20 --ops 60``.

Every crash state of every configuration (FAT12/16/32, writeback 0, 50 ms, off)
for each seed; prints one line per run and exits non-zero on any failure,
naming the seed that shows it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

from tests.durability.test_powercut import INTERVALS, VOLUMES, run_powercut


async def sweep(seeds: range, ops: int, samples_stride: int) -> int:
    failed = 0
    for seed in seeds:
        for fat in VOLUMES:
            for interval in INTERVALS:
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.monotonic()
                    tally = await run_powercut(Path(tmp), fat, interval, seed=seed, ops=ops,
                                               stride=samples_stride)
                    bad = tally.damaged + tally.repair_failed + tally.fsynced_lost
                    failed += bool(bad)
                    print(f"seed {seed} FAT{fat} writeback={interval}: {tally.summary()} "
                          f"[{time.monotonic() - start:.0f} s]", flush=True)
                    for failure in tally.failures:
                        print(f"  seed {seed}: {failure}", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--stride", type=int, default=1)
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    sys.exit(1 if anyio.run(sweep, seeds, args.ops, args.stride) else 0)


if __name__ == "__main__":
    main()
