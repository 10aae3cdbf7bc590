"""The knowledge store at 100k chunks: indexing rate, search latency, recall,
memory.

Builds a synthetic corpus (Markdown files of 10 sections each; words drawn
from a Zipfian vocabulary with topics, so that chunks about one topic share
words as real text does), appends it as ``knowledge.file.indexed`` events and
lets the knowledge projection fold it (chunk, embed with the default
`HashingEmbedder`, embedding cache in its file, FTS5, vectors and codes).
Then, over queries of 3 to 8 words taken from random chunks:

1. indexing: chunks/s from the first append until the projection caught up
   (target >= 2k/s); ratio to the embedder alone on the same texts.
2. exact baseline: numpy brute force (float32 dot products over all stored
   vectors, top 10) per query, in the same process.
3. ``search(mode="vector")``: p50/p95 (target p95 <= 20 ms), ratio to (2),
   and recall@10 against (2)'s exact top 10 (target >= 0.95); also for other
   candidate counts (the speed/recall trade-off).
4. ``search(mode="hybrid")`` (target p95 <= 20 ms) and ``mode="text"``:
   p50/p95, ratio to (2); hybrid recall@10 is not measured (its ranking is
   a fusion, with no exact counterpart).
5. sqlite-vec exact float KNN (no quantization) on a sample of queries, for
   comparison with what the store used before its in-memory index.
6. memory: a fresh process opens a kernel (`nerve.open_kernel`, no
   workflows) on the data built above and runs searches through
   ``kernel.knowledge``; its RSS (peak and final) and the vector index's
   size. The log is first topped up to 1M events (plain events appended in
   batches, ``workflow_runs`` attached as in a kernel): the target is for a
   kernel holding 100k chunks and 1M events.

The load of the machine is printed in the header: compare the ratios.

Run: ``.venv/bin/python bench/knowledge.py [--quick]`` (one run per figure).
"""

from __future__ import annotations

import itertools
import json
import random
import string
import sys
import time
from pathlib import Path

import _common as c
import attrs
import numpy as np
import trio

import nerve
from nerve.knowledge import FILE_INDEXED, FileIndexed, HashingEmbedder, open_knowledge
from nerve.knowledge._projection import load_sqlite_vec
from nerve.knowledge._search import DEFAULT_CANDIDATES
from nerve.projections import WorkflowRuns, attach_inline

SECTIONS = 10
STOP = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "by",
    "at",
    "from",
    "this",
    "be",
    "or",
]


def corpus(n_chunks: int, seed: int = 7) -> list[list[str]]:
    """Files (lists of section texts) with ``n_chunks`` sections in all."""
    rng = random.Random(seed)
    vocab = list(
        dict.fromkeys(
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))
            for _ in range(40_000)
        )
    )
    weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocab))))
    topics = [rng.sample(vocab, 150) for _ in range(400)]
    topic_weights = list(itertools.accumulate(1 / (i + 1) for i in range(150)))
    files = []
    for f in range(n_chunks // SECTIONS):
        sections = []
        for s in range(SECTIONS):
            topic = topics[rng.randrange(len(topics))]
            n = rng.randint(40, 140)
            words = []
            for _ in range(n):
                r = rng.random()
                if r < 0.15:
                    words.append(rng.choice(STOP))
                elif r < 0.55:
                    words.append(rng.choices(topic, cum_weights=topic_weights)[0])
                else:
                    words.append(rng.choices(vocab, cum_weights=weights)[0])
            sections.append(f"## Section {f}.{s}\n\n" + " ".join(words))
        files.append(sections)
    return files


def queries(files: list[list[str]], n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice(rng.choice(files)).split("\n\n", 1)[1].split()
        i = rng.randrange(len(words))
        out.append(" ".join(words[i : i + rng.randint(3, 8)]))
    return out


def ms(values: list[float]) -> tuple[float, float]:
    return c.percentile(values, 50) * 1e3, c.percentile(values, 95) * 1e3


async def run(args: object, n_chunks: int, n_queries: int, report: c.Report) -> None:
    files = corpus(n_chunks)
    qs = queries(files, n_queries)
    texts = [s for f in files for s in f]

    # Baseline for indexing: the embedder alone, on a sample of the same texts.
    sample = texts[: min(len(texts), 5000)]
    t0 = c.perf_counter()
    HashingEmbedder().embed(sample)
    embed_rate = len(sample) / (c.perf_counter() - t0)

    with c.temp_dir(args, "knowledge") as tmp:  # type: ignore[arg-type]
        async with (
            nerve.open_log(tmp / "data") as log,
            open_knowledge(log) as kn,
        ):
            c.progress(f"indexing {len(texts):,} chunks")
            t0 = c.perf_counter()
            batch = []
            for i, sections in enumerate(files):
                content = "\n\n".join(sections) + "\n"
                data = FileIndexed("bench", f"docs/f{i}.md", f"{i:064x}", len(content))
                data = attrs.evolve(data, content=content)
                batch.append(nerve.NewEvent(FILE_INDEXED, attrs.asdict(data)))
                if len(batch) == 100:
                    await log.append("knowledge-bench", batch)
                    batch = []
            if batch:
                await log.append("knowledge-bench", batch)
            await kn.wait()
            took = c.perf_counter() - t0
            stats = await kn.statistics()
            rate = stats.chunks / took
            report.add(
                "index (append + fold)",
                rate,
                "chunks/s",
                baseline=embed_rate,
                checks=[c.at_least(rate, 2000, "2k/s")],
                note=f"{stats.chunks:,} chunks in {took:.1f} s; baseline = "
                f"embedder alone {embed_rate:,.0f} texts/s",
            )

            def load(conn: object) -> tuple[np.ndarray, list[tuple[str, int]]]:
                rows = conn.execute(  # type: ignore[attr-defined]
                    "SELECT c.path, c.number, v.embedding FROM knowledge_vectors v "
                    "JOIN knowledge_chunks c ON c.id = v.id ORDER BY v.id"
                ).fetchall()
                keys = [(r[0], r[1]) for r in rows]
                matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
                return matrix.reshape(len(rows), -1), keys

            matrix, keys = await kn._read(load)
            projection = kn.projection
            qvecs = [projection.query_vector(q) for q in qs]

            exact: list[set[tuple[str, int]]] = []
            numpy_times = []
            for v in qvecs:
                t0 = time.perf_counter()
                sims = matrix @ v
                top = np.argpartition(-sims, 10)[:10]
                numpy_times.append(time.perf_counter() - t0)
                exact.append({keys[i] for i in top})
            np50, np95 = ms(numpy_times)
            report.add(
                "exact numpy top-10 p95",
                np95,
                "ms",
                note=f"p50 {np50:.2f} ms (baseline, in-process, no SQL)",
            )

            # The first vector search loads the index from knowledge.db.
            t0 = time.perf_counter()
            await kn.search(qs[0], 10, mode="vector")
            report.add(
                "vector index load (first search)",
                (time.perf_counter() - t0) * 1e3,
                "ms",
                note=f"{len(kn.vector_index):,} rows, "
                f"{kn.vector_index.nbytes / 1e6:.1f} MB in memory",
            )

            async def timed(mode: str, **kw: object) -> tuple[list[float], float]:
                times, recalls = [], []
                for q, truth in zip(qs, exact, strict=True):
                    t0 = time.perf_counter()
                    hits = await kn.search(q, 10, mode=mode, **kw)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - t0)
                    got = {(h.path, h.chunk) for h in hits}
                    recalls.append(len(got & truth) / 10)
                return times, sum(recalls) / len(recalls)

            for cand in sorted({DEFAULT_CANDIDATES, 8, 128}):
                times, recall = await timed("vector", candidates=cand)
                p50, p95 = ms(times)
                default = cand == DEFAULT_CANDIDATES
                report.add(
                    f"vector p95, {cand} candidates",
                    p95,
                    "ms",
                    baseline=np95,
                    checks=[c.at_most(p95, 20, "20 ms")] if default else [],
                    note=f"p50 {p50:.2f} ms; recall@10 {recall:.3f}",
                )
                report.add(
                    f"vector recall@10, {cand} candidates",
                    recall,
                    "",
                    checks=[c.at_least(recall, 0.95, "0.95")] if default else [],
                )
            for mode in ("hybrid", "text"):
                times, _ = await timed(mode)
                p50, p95 = ms(times)
                report.add(
                    f"{mode} p95",
                    p95,
                    "ms",
                    baseline=np95,
                    checks=[c.at_most(p95, 20, "20 ms")] if mode == "hybrid" else [],
                    note=f"p50 {p50:.2f} ms",
                )

            # sqlite-vec without quantization, for comparison (few queries).
            def float_knn(conn: object) -> list[float]:
                dim = projection.dimension
                db = conn  # type: ignore[assignment]
                load_sqlite_vec(db)  # type: ignore[arg-type]
                db.execute("SAVEPOINT bench")  # type: ignore[attr-defined]
                db.execute(  # type: ignore[attr-defined]
                    f"CREATE VIRTUAL TABLE temp.f USING vec0(v float[{dim}])"
                )
                db.execute(  # type: ignore[attr-defined]
                    "INSERT INTO temp.f(rowid, v) SELECT id, embedding "
                    "FROM knowledge_vectors"
                )
                out = []
                for v in qvecs[:20]:
                    t0 = time.perf_counter()
                    db.execute(  # type: ignore[attr-defined]
                        "SELECT rowid FROM temp.f WHERE v MATCH ? AND k = 10",
                        (v.tobytes(),),
                    ).fetchall()
                    out.append(time.perf_counter() - t0)
                db.execute("ROLLBACK TO bench")  # type: ignore[attr-defined]
                db.execute("RELEASE bench")  # type: ignore[attr-defined]
                return out

            f50, f95 = ms(await kn._read(float_knn))
            report.add(
                "sqlite-vec float KNN p95",
                f95,
                "ms",
                baseline=np95,
                note=f"p50 {f50:.2f} ms; exact, unquantized, 20 queries",
            )
            index_mb = kn.vector_index.nbytes / 1e6
        total = c.sized(args, 1_000_000, 50_000)
        c.progress(f"memory: topping the log up to {total:,} events")
        await top_up(tmp / "data", total)
        c.progress("memory: searching from a fresh process")
        child = await trio.run_process(
            [
                sys.executable,
                __file__,
                "--memory-of",
                str(tmp / "data"),
                "--",
                *qs[:50],
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
        memory = json.loads(child.stdout.decode().strip().splitlines()[-1])
        report.add(
            "RSS, kernel holding the store",
            memory["peak_mb"],
            "MB",
            checks=[c.at_most(memory["peak_mb"], 200, "200 MB")],
            note=f"peak (VmHWM); after the searches {memory['rss_mb']:.0f} MB, of "
            f"which the vector index {memory['index_mb']:.1f} MB ({index_mb:.1f} "
            f"MB in the bench process), {memory['chunks']:,} chunks, "
            f"{memory['events']:,} events",
        )


async def top_up(data: Path, total: int) -> None:
    """Append small plain events until the log holds ``total``."""
    async with nerve.open_log(data) as log:
        await attach_inline(log, WorkflowRuns())
        while log.head < total:
            n = min(1000, total - log.head)
            events = [nerve.NewEvent("bench.filler", {"i": i}) for i in range(n)]
            await log.append(f"filler-{log.head // 100_000}", events)


def memory_of(data: str, queries: list[str]) -> None:
    """Open a kernel on ``data``, search, print the process's memory (JSON)."""

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
        return 0.0

    async def go() -> dict[str, float]:
        async with nerve.open_kernel(nerve.App(), data) as kernel:
            kn = kernel.knowledge
            assert kn is not None
            for q in queries:
                await kn.search(q, 10)
            stats = await kn.statistics()
            return {
                "rss_mb": status("VmRSS"),
                "peak_mb": status("VmHWM"),
                "index_mb": kn.vector_index.nbytes / 1e6,
                "chunks": stats.chunks,
                "events": kernel.log.head,
            }

    print(json.dumps(trio.run(go)))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--memory-of":
        memory_of(sys.argv[2], sys.argv[4:])
        return
    args = c.parse_args(__doc__ or "")
    # One build of 100k chunks takes minutes: each figure is one run, over
    # many queries (the percentiles come from those), not a median of runs.
    args.runs = 1
    n_chunks = c.sized(args, 100_000, 5_000)
    n_queries = c.sized(args, 200, 50)
    c.header("knowledge store", args, chunks=n_chunks, queries=n_queries)
    report = c.Report("knowledge: 100k chunks, default embedder")
    trio.run(run, args, n_chunks, n_queries, report)
    report.print()


if __name__ == "__main__":
    main()
