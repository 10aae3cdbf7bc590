"""Crash tests: an acknowledged append survives ``kill -9``, and recovery is exact.

A child process (`crash_child.py`) appends from many tasks and prints one line
per append that returned; the test SIGKILLs it after a random number of those
acknowledgements, reopens the log in-process and checks every acknowledged
append is there, at exactly its acknowledged positions and versions, with the
payload the child wrote; that positions and stream versions have no gaps; that
no append is partly written; that refused appends wrote nothing; that retried
idempotency keys returned the original result; that blobs read back; and that
the hash chain verifies. The child then runs again on the same directory, so
recovery is exercised after repeated crashes. In archive mode the child also
archives old days while appending, and is often killed mid-run: every event
must still be readable exactly once, from the archive or the hot table.

Normal suite: 27 kills. `make soak` (``-m slow``): 210 more.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest
import trio
from _children import Lines, load_child, next_line, reaped

import nerve

child = load_child("crash_child")

ROUND_TIMEOUT = 60  # seconds; a safety net against hangs, not a timing assertion


@dataclass(frozen=True)
class Ack:
    aid: str
    stream: str
    first: int
    last: int
    version: int
    n: int
    key: str | None
    dup: bool


@dataclass(frozen=True)
class Append:
    """One append as found in the log."""

    aid: str
    stream: str
    first: int
    last: int
    version: int
    n: int
    key: str | None


@dataclass
class History:
    """What the children of one data directory reported, over all rounds."""

    acks: list[Ack] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    kills: int = 0
    archive_calls: int = 0


def parse_line(line: str, history: History) -> str:
    """Record one line of the child's output; return its kind."""
    kind, *rest = line.split(" ")
    if kind == "ack":
        aid, stream, first, last, version, n, key, dup = rest
        history.acks.append(
            Ack(
                aid,
                stream,
                int(first),
                int(last),
                int(version),
                int(n),
                None if key == "-" else key,
                dup == "1",
            )
        )
    elif kind == "rej":
        history.rejected.add(rest[0])
    elif kind == "archived":
        history.archive_calls += 1
    elif kind not in ("ready", "archiving"):
        raise AssertionError(f"unexpected line from the child: {line!r}")
    return kind


def read_text(path: Path) -> str:
    return path.read_text(errors="replace")


def pick_target(rng: random.Random) -> int:
    """How many acks to wait for before the kill (-1: do not wait for ready)."""
    r = rng.random()
    if r < 0.05:
        return -1
    if r < 0.12:
        return 0
    if r < 0.45:
        return rng.randint(1, 20)
    if r < 0.8:
        return rng.randint(21, 150)
    return rng.randint(151, 400)


async def run_and_kill(
    data_dir: Path,
    mode: str,
    seed: int,
    rng: random.Random,
    history: History,
    stderr_path: Path,
) -> None:
    """Start the child, SIGKILL it after a random number of acks, record its output."""
    target = pick_target(rng)
    if mode == "archive" and rng.random() < 0.8:
        target = max(target, rng.randint(30, 400))  # give days time to age
    # In archive mode, often kill right when an archive run starts, or a moment
    # later (its export and its commit are separate steps).
    at_archive = mode == "archive" and rng.random() < 0.6
    delay = rng.choice([0.0, 0.0, rng.uniform(0, 0.005), rng.uniform(0, 0.03)])
    with stderr_path.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(child.__file__), str(data_dir), mode, str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    async with reaped(proc):
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        with trio.fail_after(ROUND_TIMEOUT):
            acks = 0
            if target < 0:
                await trio.sleep(rng.uniform(0, 0.5))
            else:
                ready = False
                while True:
                    line = await next_line(lines, proc, stderr_path)
                    kind = parse_line(line, history)
                    ready = ready or kind == "ready"
                    acks += kind == "ack"
                    # (an archive call may run long: do not wait forever for one)
                    waited = (
                        not at_archive or kind == "archiving" or acks > target + 200
                    )
                    if ready and acks >= target and waited:
                        break
                if delay:
                    await trio.sleep(delay)
            proc.kill()
            # Lines already in the pipe were printed after their append returned:
            # they are acknowledgements too.
            while (line := await lines.next()) is not None:
                parse_line(line, history)
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"child was not killed (status {proc.returncode}):\n" + read_text(stderr_path)
    )
    history.kills += 1


@dataclass
class Checked:
    events: int
    blob_events: int
    archived_days: int
    hot_rows: int


async def check_log(data_dir: Path, history: History) -> Checked:
    """Reopen the log and check it against everything the children acknowledged."""
    async with nerve.open_log(data_dir, watch_interval=None) as log:
        assert await log.verify() is None
        events = [ev async for ev in log.read()]
        head = log.head
        streams = {ev.stream for ev in events} | {a.stream for a in history.acks}
        stream_versions = {s: await log.stream_version(s) for s in streams}
        days = await log.archived_days()
        conn = apsw.Connection(str(log.path))
        try:
            hot = conn.execute(
                "SELECT position, payload, blob FROM logs ORDER BY position"
            ).fetchall()
        finally:
            conn.close()
        for _, _, digest in hot:
            if digest is not None:
                log.blobs.get_sync(digest)  # checks the content against the digest

    # Positions: 1..head, no gaps, no repeats (archive and hot table together).
    assert [ev.position for ev in events] == list(range(1, len(events) + 1))
    assert head == len(events)
    # The archive and the hot table tile the log: no event in both, none in neither.
    expected_first = 1
    for day in days:
        assert day.first == expected_first, days
        assert day.count == day.last - day.first + 1, day
        expected_first = day.last + 1
    assert [r[0] for r in hot] == list(range(expected_first, head + 1))

    # Stream versions: 1..n in position order, and what stream_version reports.
    versions: dict[str, list[int]] = defaultdict(list)
    for ev in events:
        versions[ev.stream].append(ev.version)
    for stream, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), stream
    for stream, v in stream_versions.items():
        assert v == len(versions.get(stream, ())), stream

    # Content, and no partial append: every append present has all its events,
    # adjacent, in order, with exactly the data and meta the child wrote.
    by_aid: dict[str, list[nerve.RecordedEvent]] = defaultdict(list)
    for ev in events:
        assert ev.type == child.EVENT_TYPE
        by_aid[ev.data["a"]].append(ev)
    appends: dict[str, Append] = {}
    by_key: dict[str, Append] = {}
    for aid, evs in by_aid.items():
        first = evs[0]
        n, stream, key = first.data["n"], first.stream, first.data["k"]
        assert len(evs) == n, f"append {aid} is partial: {len(evs)} of {n} events"
        for i, ev in enumerate(evs):
            assert ev.position == first.position + i, aid
            assert ev.version == first.version + i, aid
            assert ev.stream == stream, aid
            assert ev.data == child.payload(aid, i, n, stream, key, ev.data["size"])
            assert dict(ev.meta) == child.meta_for(aid, i), aid
        rec = Append(
            aid, stream, first.position, evs[-1].position, evs[-1].version, n, key
        )
        appends[aid] = rec
        if key is not None:
            assert key not in by_key, f"key {key} written twice: {by_key[key]}, {rec}"
            by_key[key] = rec

    # Every acknowledged append is there, exactly as acknowledged.
    for ack in history.acks:
        got = (ack.stream, ack.first, ack.last, ack.version)
        if ack.key is None:
            assert not ack.dup, ack
            found = appends.get(ack.aid)
            assert found is not None, f"acknowledged append lost: {ack}"
        else:
            found = by_key.get(ack.key)
            assert found is not None, f"acknowledged keyed append lost: {ack}"
            if ack.dup:
                assert ack.aid not in appends, f"duplicate key wrote events: {ack}"
            else:
                assert found.aid == ack.aid, (ack, found)
        want = (found.stream, found.first, found.last, found.version)
        assert got == want, (ack, found)
        if not ack.dup:
            assert ack.n == found.n == ack.last - ack.first + 1, (ack, found)
    for aid in history.rejected:
        assert aid not in appends, f"refused append {aid} was written"

    # Blobs: big payloads live in the blob store, small ones inline.
    size_at = {ev.position: ev.data["size"] for ev in events}
    for position, inline, digest in hot:
        big = size_at[position] > child.BLOB_THRESHOLD
        assert (digest is not None) == big, position
        assert (inline is None) == big, position
    blob_events = sum(1 for size in size_at.values() if size > child.BLOB_THRESHOLD)
    return Checked(len(events), blob_events, len(days), len(hot))


async def crash_rounds(
    tmp_path: Path, mode: str, seed: int, rounds: int
) -> tuple[History, Checked]:
    rng = random.Random(f"crash-{mode}-{seed}")
    data_dir = tmp_path / "data"
    history = History()
    checked = Checked(0, 0, 0, 0)
    for r in range(rounds):
        child_seed = seed * 10_000 + r  # unique per run on this directory
        await run_and_kill(
            data_dir, mode, child_seed, rng, history, tmp_path / f"stderr-{r}.txt"
        )
        with trio.fail_after(ROUND_TIMEOUT):
            checked = await check_log(data_dir, history)
        assert checked.events >= max((a.last for a in history.acks), default=0)
    assert history.kills == rounds
    return history, checked


@pytest.mark.parametrize("seed", range(7))
async def test_kill_9_keeps_every_acknowledged_append(
    tmp_path: Path, seed: int
) -> None:
    mode = "blobs" if seed % 3 == 2 else "mixed"
    history, checked = await crash_rounds(tmp_path, mode, seed, rounds=3)
    if mode == "blobs" and history.acks:
        assert checked.blob_events


@pytest.mark.parametrize("seed", range(2))
async def test_kill_9_during_archive_keeps_every_event_once(
    tmp_path: Path, seed: int
) -> None:
    history, checked = await crash_rounds(tmp_path, "archive", seed, rounds=3)
    # Not vacuous: archive runs happened and moved days out of the hot table.
    assert history.archive_calls
    assert checked.archived_days


SOAK_ROUNDS = 35  # per data directory: 6 directories, 210 kills


@pytest.mark.slow
@pytest.mark.parametrize("directory", range(2))
@pytest.mark.parametrize("mode", ["mixed", "blobs", "archive"])
async def test_kill_9_soak(tmp_path: Path, mode: str, directory: int) -> None:
    seed = 100 + directory
    history, checked = await crash_rounds(tmp_path, mode, seed, rounds=SOAK_ROUNDS)
    assert history.kills == SOAK_ROUNDS
    assert checked.events
    if mode == "blobs":
        assert checked.blob_events
    if mode == "archive":
        assert checked.archived_days
