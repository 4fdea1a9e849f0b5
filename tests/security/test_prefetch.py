"""Forged read-ahead: ``CachePrefetch`` gives nobody a page, a pin or a frame of anyone's.

Only the file systems (and the kernel) may send it to the cache; a process is
refused by the router. Even sent with authority and naming the victim's secret
sectors, or every sector of the disk, it only brings pages into the cache,
bounded, unpinned and for nobody: no reply carries a byte, no pin moves, the
attacker's own file still reads its own bytes, and the invariants of the
adversarial suite hold.
"""

from __future__ import annotations

import pytest

from microkernel.errors import CapabilityDenied
from servers.cache.protocol import PREFETCH_MAX_PAGES, CachePrefetch, Extent
from servers.fat.protocol import FIRST_CLUSTER
from tests.e2e.conftest import ImageFactory
from tests.security.adversary import SECRET, Tally, attack, scene

pytestmark = pytest.mark.anyio

FILES = {"/secret.txt": SECRET, "/attacker.txt": b"mine" * 3000}


async def test_forged_cache_prefetch(make_image: ImageFactory) -> None:
    image = make_image(FILES)
    second = make_image({})
    async with scene(image, second) as sc:
        before = sc.snapshot()
        device = sc.live.devices[0]
        whole_disk = CachePrefetch(device, [Extent(0, 65536)])
        secret_sectors = CachePrefetch(device, [Extent(lba, 8) for lba in sc.live.lbas])
        tally = Tally()
        for dst in ("cache", "vfs", "fat0"):  # from the attacker's own port: refused
            for msg in (whole_disk, secret_sectors):
                await attack(sc.attacker, dst, msg, tally, call=False)
                await attack(sc.attacker, dst, msg, tally, call=True)
        assert tally.refused == tally.tried == 12
        with pytest.raises(CapabilityDenied):
            await sc.attacker.kernel.endpoint.call("cache", whole_disk, object)

        # With authority (the kernel port stands in for a file system naming any sectors):
        # pages come in, bounded, and belong to nobody.
        cache = sc.system.server("cache")
        present = cache.cache_stats().pages_present  # type: ignore[attr-defined]
        kernel = sc.system.kernel
        for msg in (secret_sectors, whole_disk):
            reply: object = await kernel.call("cache", msg, object)
            assert SECRET[:16] not in repr(reply).encode()
        grew = cache.cache_stats().pages_present - present  # type: ignore[attr-defined]
        assert 0 < grew <= 2 * PREFETCH_MAX_PAGES
        assert sc.snapshot().pins == before.pins  # nobody holds a new pin

        # The attacker's own file is still its own bytes, read through the pages read ahead.
        assert (await sc.attacker.stat("/attacker.txt")).native[FIRST_CLUSTER]
        assert await sc.attacker.read_file("/attacker.txt") == b"mine" * 3000
        await sc.attacker.exit()
        violations = await sc.check(before, tally)
    assert violations == []
