"""A short tour of oxloop: tasks, timers, a TCP-free echo over a socket pair, threads, metrics."""

import asyncio
import contextvars
import socket
import threading
import time

import oxloop

request_id = contextvars.ContextVar("request_id", default="-")


async def worker(n: int) -> int:
    request_id.set(f"job-{n}")
    await asyncio.sleep(0.01 * (n % 3))
    return n * n


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__name__}")

    started = time.perf_counter()
    squares = await asyncio.gather(*(worker(n) for n in range(1000)))
    print(
        f"1000 tasks gathered in {time.perf_counter() - started:.3f}s, "
        f"sum of squares {sum(squares)}"
    )

    fired = loop.create_future()
    loop.call_later(0.05, fired.set_result, "timer fired")
    print(await fired)

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    await loop.sock_sendall(a, b"hello over a socket pair")
    print("received:", (await loop.sock_recv(b, 100)).decode())
    a.close()
    b.close()

    done = loop.create_future()
    threading.Thread(
        target=lambda: loop.call_soon_threadsafe(done.set_result, "hello from a thread")
    ).start()
    print(await done)

    async with asyncio.TaskGroup() as group:
        results = [group.create_task(asyncio.sleep(0.01, result=i)) for i in range(3)]
    print("TaskGroup results:", [t.result() for t in results])

    try:
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.02)
    except TimeoutError:
        print("wait_for timed out as expected")

    print("loop counters:", loop._counters())


if __name__ == "__main__":
    oxloop.run(main())
