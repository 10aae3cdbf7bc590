"""Actor ``tell`` throughput against a raw trio memory channel, same run.

1. baseline: a producer task sends N messages into
   ``trio.open_memory_channel(1000)``; a consumer task receives them all.
2. nerve: a producer ``await actor.tell(m)`` N times to an `Actor` whose
   ``handle`` counts them (mailbox of 1000, overflow ``block``).
   Target: >= 80 % of (1).
3. nerve: ``tell_nowait`` into a ``drop_new`` mailbox large enough to never
   drop, for the cost of the non-blocking path.

Run: ``.venv/bin/python bench/actors.py [--quick] [--runs N]``.
"""

from __future__ import annotations

from typing import Any

import _common as c
import trio

from nerve.actors import Actor


class Counter(Actor[int]):
    def __init__(self, n: int, **options: Any) -> None:
        super().__init__("counter", **options)
        self.n = n
        self.seen = 0
        self.done = trio.Event()

    async def handle(self, message: int) -> None:
        self.seen += 1
        if self.seen == self.n:
            self.done.set()


def channel_rate(n: int) -> float:
    async def main() -> float:
        send, receive = trio.open_memory_channel[int](1000)

        async def consume() -> None:
            async for _ in receive:
                pass

        start = c.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            async with send:
                for i in range(n):
                    await send.send(i)
        return n / (c.perf_counter() - start)

    return trio.run(main)


def actor_rate(n: int, *, nowait: bool) -> float:
    async def main() -> float:
        if nowait:
            actor = Counter(n, mailbox_size=n + 1, overflow="drop_new")
        else:
            actor = Counter(n, mailbox_size=1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            start = c.perf_counter()
            if nowait:
                for i in range(n):
                    actor.tell_nowait(i)
            else:
                for i in range(n):
                    await actor.tell(i)
            await actor.done.wait()
            elapsed = c.perf_counter() - start
            actor.stop()
        return n / elapsed

    return trio.run(main)


def main() -> None:
    args = c.parse_args(__doc__ or "")
    n = c.sized(args, 1_000_000, 100_000)
    c.header("actors: tell vs a trio memory channel", args, messages=n)
    base, tell, nowait = c.Series(), c.Series(), c.Series()
    for run in range(args.runs):
        c.progress(f"run {run + 1}/{args.runs}")
        base.add(channel_rate(n))
        tell.add(actor_rate(n, nowait=False))
        nowait.add(actor_rate(n, nowait=True))
    report = c.Report("actors")
    report.add("memory channel send/receive (baseline)", base, "msg/s")
    report.add(
        "actor tell (block mailbox)",
        tell,
        "msg/s",
        baseline=base.median,
        checks=[c.at_least(tell.median / base.median, 0.8, "80% of baseline")],
    )
    report.add("actor tell_nowait", nowait, "msg/s", baseline=base.median)
    report.print()


if __name__ == "__main__":
    main()
