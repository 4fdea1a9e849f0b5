"""The copy path's private frames are the process's: its quota bounds them, close returns them.

On an unaligned volume every file page is a private frame copied from the
cache. Those frames are charged to the process whose access brought them in;
a process at its quota has its own idle pages written back and dropped and
the access retried, and a process that asks for more than its quota can ever
hold at once gets ENOMEM for itself alone.
"""

from __future__ import annotations

import errno

import pytest

import microkernel
from microkernel.config import DeviceConfig, SystemConfig
from tests.e2e.conftest import ImageFactory

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 4096 * 3  # 3 MiB


def _config(image: object) -> SystemConfig:
    return SystemConfig(memory="64M", process_memory="1M", devices=[DeviceConfig(image=str(image))])


async def test_private_pages_are_charged_to_the_reader_and_return_at_close(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/big.bin": DATA}, aligned=False)
    async with microkernel.boot(config=_config(image)) as system:
        reader = await system.spawn("reader")
        async with await reader.open("/big.bin", "rb") as f:
            assert not f.zero_copy
            assert await f.read(65536) == DATA[:65536]
            held = len(system.memory.frames_of(reader.kernel.port))
            assert 0 < held <= 256  # its quota (1 MiB), not the kernel file driver's
            assert await f.read() == DATA[65536:]  # three times its quota, streamed
            assert len(system.memory.frames_of(reader.kernel.port)) <= 256
        assert system.memory.frames_of(reader.kernel.port) == []


async def test_pages_a_closer_paid_for_pass_to_a_remaining_opener(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/shared.bin": DATA[: 256 * 1024]}, aligned=False)
    async with microkernel.boot(config=_config(image)) as system:
        first, second = await system.spawn("first"), await system.spawn("second")
        f = await first.open("/shared.bin", "rb")
        g = await second.open("/shared.bin", "rb")
        assert await f.read() == DATA[: 256 * 1024]
        paid = system.memory.frames_of(first.kernel.port)
        assert paid
        await f.close()
        await first.exit()
        assert set(paid) <= set(system.memory.frames_of(second.kernel.port))
        assert await g.read() == DATA[: 256 * 1024]  # the frames were not freed under it
        await g.close()
        assert system.memory.frames_of(second.kernel.port) == []


async def test_a_process_past_its_quota_gets_enomem_alone(make_image: ImageFactory) -> None:
    image = make_image({"/big.bin": DATA}, aligned=False)
    async with microkernel.boot(config=_config(image)) as system:
        starved, other = await system.spawn("starved"), await system.spawn("other")
        system.memory.set_quota(starved.kernel.port, 8)  # less than the smallest part
        async with await starved.open("/big.bin", "rb") as f:
            with pytest.raises(OSError) as short:
                await f.read(4096 * 64)
            assert short.value.errno == errno.ENOMEM
        assert system.memory.frames_of(starved.kernel.port) == []
        assert await other.read_file("/big.bin") == DATA  # everyone else reads on
