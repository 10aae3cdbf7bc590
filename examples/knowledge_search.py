"""Knowledge search over this repository.

    python examples/knowledge_search.py [DATA_DIR] [QUERY...]

Indexes nerve's own source tree (honouring its .gitignore) as the repository
``nerve``: each new or changed file is a ``knowledge.file.indexed`` event in
the log, and the knowledge projection chunks it, embeds the chunks (the
default embedder needs no model download) and keeps them in
DATA_DIR/knowledge.db. A second run finds every file unchanged (same sha256)
and appends nothing. Then it runs hybrid searches (BM25 full text and
vectors, fused by reciprocal rank). `nerve knowledge index PATH --repo NAME`
and `nerve knowledge search QUERY` do the same from the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

import nerve
from nerve.knowledge import open_knowledge

REPOSITORY = Path(__file__).resolve().parent.parent
QUERIES = [
    "how is a crashed run resumed with its step journal",
    "group commit one fsync per batch",
    "asyncio guest mode",
]


async def main(data_dir: str, queries: list[str]) -> None:
    async with nerve.open_log(data_dir) as log, open_knowledge(log) as knowledge:
        result = await knowledge.index(
            REPOSITORY, repo="nerve", exclude=["data/", "bench/.data/"]
        )
        print(
            f"indexed {REPOSITORY} as 'nerve': {len(result.added)} added, "
            f"{len(result.changed)} changed, {len(result.removed)} removed, "
            f"{result.unchanged} unchanged"
        )
        stats = await knowledge.statistics()
        print(f"knowledge.db: {stats.files} files, {stats.chunks} chunks\n")
        for query in queries:
            print(f"search: {query!r}")
            for hit in await knowledge.search(query, k=3, repo="nerve"):
                print(f"  {hit.path}:{hit.start_line}-{hit.end_line}  {hit.score:.3f}")
            print()


if __name__ == "__main__":
    trio.run(
        main,
        sys.argv[1] if len(sys.argv) > 1 else "data",
        sys.argv[2:] or QUERIES,
    )
