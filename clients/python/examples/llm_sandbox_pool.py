"""Code written for llm-sandbox's container pooling, on sandpool: only the
two imports changed.

    SANDPOOL_ADDR=127.0.0.1:50051 python examples/llm_sandbox_pool.py
"""

from concurrent.futures import ThreadPoolExecutor

from sandpool.llm_sandbox import SandboxSession
from sandpool.llm_sandbox.pool import PoolConfig, PoolExhaustedError, create_pool_manager

pool = create_pool_manager(
    backend="docker",
    config=PoolConfig(max_pool_size=3, min_pool_size=2),
    lang="python",
)


def task(n: int) -> str:
    with SandboxSession(pool=pool, lang="python") as session:
        return session.run(f"print('task', {n}, 'done')").stdout.strip()


try:
    with ThreadPoolExecutor(max_workers=6) as executor:
        for line in executor.map(task, range(6)):
            print(line)
    stats = pool.get_stats()
    print(f"containers: {stats['total_size']}/{stats['max_size']}, states: {stats['state_counts']}")
except PoolExhaustedError as e:
    print("pool exhausted:", e)
finally:
    pool.close()
print("closed:", pool.get_stats()["closed"])
