"""Many sessions at once from asyncio; the pool hands out its containers in
turn (WAIT strategy) and every lease is released at the end of its block.

    SANDPOOL_POOL=python python examples/async_fanout.py
"""

import asyncio
import os

import sandpool

POOL = os.environ.get("SANDPOOL_POOL", "python")


async def square(client: sandpool.AsyncClient, n: int) -> int:
    async with client.acquire(POOL) as session:
        result = await session.run_collect(f"print({n} ** 2)")
        return int(result.stdout)


async def main() -> None:
    async with sandpool.AsyncClient() as client:
        squares = await asyncio.gather(*(square(client, n) for n in range(12)))
        print("squares:", squares)


asyncio.run(main())
