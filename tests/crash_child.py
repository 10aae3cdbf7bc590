"""The program `test_crash.py` kills with SIGKILL: appends to a log forever.

    python tests/crash_child.py DATA_DIR MODE SEED

MODE is ``mixed`` (mostly small payloads, some blobs), ``blobs`` (mostly
payloads above the blob threshold) or ``archive`` (a fake clock on old days
and a task archiving whole days while the appenders run). SEED seeds every
random choice; give each run on one data directory its own seed, because the
append ids (written into every event) are made from it.

Output, one line per fact, flushed at once (each line is printed only after
the call it reports has returned, so every ``ack`` is a durable append):

    ready <head>
    ack <append-id> <stream> <first> <last> <version> <n-events> <key|-> <dup 0|1>
    rej <append-id> <error class>        the append was refused: nothing written
    archiving                            a `Log.archive` call starts
    archived <days> <head>               it returned

Every event's data is `payload(...)`, deterministic from the append id, the
event's index, the append's event count, stream, key and payload size, so the
test recomputes it and compares; the first event of an append carries
`meta_for(...)`.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from datetime import timedelta
from typing import Any

import trio
import trio.lowlevel

import nerve
from nerve.events import ExpectedVersion

EVENT_TYPE = "crash.ev"
BLOB_THRESHOLD = 2048
ARCHIVE_EPOCH = 1_577_836_800.0  # 2020-01-01T00:00:00Z: "old days"
CLOCK_STEP = 4 * 3600.0  # fake seconds per clock reading (one per write batch)
ARCHIVE_AGE = timedelta(days=1)
MODES = ("mixed", "blobs", "archive")


def payload(aid: str, i: int, n: int, stream: str, key: str | None, size: int) -> Any:
    """The data of event ``i`` of ``n`` of append ``aid`` (``size`` pad chars)."""
    seed = hashlib.sha256(f"{aid}:{i}:{stream}".encode()).hexdigest()
    pad = (seed * (size // len(seed) + 1))[:size]
    return {"a": aid, "i": i, "n": n, "s": stream, "k": key, "size": size, "pad": pad}


def meta_for(aid: str, i: int) -> dict[str, Any]:
    return {"aid": aid} if i == 0 else {}


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class FakeClock:
    """A wall clock that moves ``CLOCK_STEP`` seconds each time it is read."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += CLOCK_STEP
        return self.now


class Gate:
    """Lets the archiver stop the appenders and wait until none is in flight."""

    def __init__(self) -> None:
        self.is_open = True
        self.opened = trio.Event()
        self.inflight = 0
        self.idle = trio.Event()

    async def enter(self) -> None:
        while not self.is_open:
            await self.opened.wait()
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()

    async def close(self) -> None:
        self.is_open = False
        self.opened = trio.Event()
        while self.inflight:
            self.idle = trio.Event()
            await self.idle.wait()

    def open(self) -> None:
        self.is_open = True
        self.opened.set()


class Child:
    def __init__(self, log: nerve.Log, mode: str, seed: int) -> None:
        self.log = log
        self.mode = mode
        self.seed = seed
        self.known: dict[str, int] = {}  # stream -> highest version seen
        self.keys: list[tuple[str, str]] = []  # (key, stream) known to be written
        self.gate = Gate()
        if mode == "blobs":
            self.streams = [f"b{j}" for j in range(3)]
            self.big_share = 0.8
        else:
            self.streams = [f"s{j}" for j in range(5)]
            self.big_share = 0.15

    async def scan(self) -> float:
        """Learn stream versions and written keys from the log; return the last ts."""
        last_ts = 0
        async for ev in self.log.read():
            self.known[ev.stream] = max(self.known.get(ev.stream, 0), ev.version)
            data = ev.data
            if data.get("k") is not None and data["i"] == 0:
                self.keys.append((data["k"], ev.stream))
            last_ts = ev.ts
        return last_ts / 1000

    async def append(
        self,
        rng: random.Random,
        aid: str,
        stream: str,
        *,
        expected: int | ExpectedVersion | None = None,
        key: str | None = None,
    ) -> None:
        n = rng.choice([1, 1, 1, 2, 3, 4, 5])
        events = []
        for i in range(n):
            if rng.random() < self.big_share:
                size = rng.randint(BLOB_THRESHOLD + 1, 12_000)
            else:
                size = rng.randint(0, 300)
            events.append(
                nerve.NewEvent(
                    EVENT_TYPE,
                    payload(aid, i, n, stream, key, size),
                    meta_for(aid, i),
                )
            )
        await self.gate.enter()
        try:
            result = await self.log.append(
                stream, events, expected_version=expected, idempotency_key=key
            )
        except (nerve.WrongExpectedVersion, nerve.DuplicateIdempotencyKey) as e:
            emit(f"rej {aid} {e.__class__.__name__}")
            return
        finally:
            self.gate.leave()
        emit(
            f"ack {aid} {result.stream} {result.first_position} "
            f"{result.last_position} {result.version} {n} {key or '-'} "
            f"{int(result.duplicate)}"
        )
        self.known[stream] = max(self.known.get(stream, 0), result.version)
        if key is not None:
            self.keys.append((key, stream))

    async def twin(self, aid: str, stream: str, key: str) -> None:
        await self.append(random.Random(aid), aid, stream, key=key)

    async def appender(self, task: int) -> None:
        rng = random.Random(f"{self.seed}-{task}")
        count = 0
        while True:
            count += 1
            aid = f"{self.seed}.{task}.{count}"
            stream = rng.choice(self.streams)
            roll = rng.random()
            if roll < 0.15:
                await self.append(rng, aid, stream, expected=self.known.get(stream, 0))
            elif roll < 0.22:
                expected = nerve.STREAM_EXISTS if self.known.get(stream) else None
                await self.append(rng, aid, stream, expected=expected)
            elif roll < 0.27:
                fresh = f"fresh.{self.seed}.{task}.{count}"
                await self.append(rng, aid, fresh, expected=nerve.NO_STREAM)
            elif roll < 0.52:
                await self.append(rng, aid, stream, key=f"k.{aid}")
            elif roll < 0.60 and self.keys:
                # Retry a key that is known to be written (this run, or an earlier
                # run read back at start): nothing may be written again.
                key, key_stream = rng.choice(self.keys)
                if rng.random() < 0.1:
                    key_stream = stream  # possibly another stream: refused
                await self.append(rng, aid, key_stream, key=key)
            elif roll < 0.63:
                # Twins: the same new key, concurrently (often in one batch).
                key = f"k.{aid}"
                async with trio.open_nursery() as nursery:
                    for twin in ("x", "y"):
                        nursery.start_soon(self.twin, f"{aid}{twin}", stream, key)
            else:
                await self.append(rng, aid, stream)
            if rng.random() < 0.3:
                await trio.lowlevel.checkpoint()

    async def archiver(self, clock: FakeClock) -> None:
        rng = random.Random(f"{self.seed}-archiver")
        while True:
            await trio.sleep(0.005)
            roll = rng.random()
            try:
                if roll < 0.2:
                    # Stop the appenders, jump three days: every day is old
                    # enough, so the hot table ends up empty.
                    await self.gate.close()
                    clock.now += 3 * 86_400
                    emit("archiving")
                    days = await self.log.archive(ARCHIVE_AGE, now=clock.now)
                elif roll < 0.4:
                    # By the real clock every fake day is old, the one the
                    # appenders are still writing to included.
                    emit("archiving")
                    days = await self.log.archive(now=time.time())
                else:
                    emit("archiving")
                    days = await self.log.archive(ARCHIVE_AGE, now=clock.now)
                emit(f"archived {len(days)} {self.log.head}")
            finally:
                self.gate.open()


async def main(data_dir: str, mode: str, seed: int) -> None:
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; expected one of {MODES}")
    clock = FakeClock(ARCHIVE_EPOCH)
    kwargs: dict[str, Any] = {"blob_threshold": BLOB_THRESHOLD, "watch_interval": None}
    if mode == "archive":
        kwargs["clock"] = clock
    async with nerve.open_log(data_dir, **kwargs) as log:
        child = Child(log, mode, seed)
        last_ts = await child.scan()
        clock.now = max(clock.now, last_ts) + CLOCK_STEP
        emit(f"ready {log.head}")
        tasks = random.Random(seed).randint(8, 32)
        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(child.appender, task)
            if mode == "archive":
                nursery.start_soon(child.archiver, clock)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
