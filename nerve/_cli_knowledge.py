"""``nerve knowledge index|search|stats``: the knowledge store from the shell.

Everything goes through `nerve.knowledge.open_knowledge`: indexing appends
events to the log and waits until the knowledge projection has folded them
into ``knowledge.db``; searching reads that database.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import trio
from rich.markup import escape

from nerve.config import Config
from nerve.knowledge import MODES, Hit, IndexResult, Knowledge, open_knowledge

from ._cli_admin import open_cli_log
from ._cli_common import Target, config_option, data_option, json_option, run_trio
from ._cli_output import Output, compact, jsonable


@attrs.frozen
class Root:
    """One tree to index."""

    path: Path
    repo: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def roots_to_index(
    config: Config | None,
    path: Path | None,
    repo: str | None,
    include: Sequence[str],
    exclude: Sequence[str],
) -> list[Root]:
    """PATH (with the matching config root's settings, if any), else every
    root of the config's ``knowledge.roots``."""
    configured = (
        [
            Root(
                config.resolve(r.path),
                r.repo or config.resolve(r.path).resolve().name,
                r.include,
                r.exclude,
            )
            for r in config.knowledge.roots
        ]
        if config is not None
        else []
    )
    if path is None:
        if not configured:
            raise click.UsageError(
                "give a PATH to index, or list knowledge.roots in nerve.yaml"
            )
        if repo is not None or include or exclude:
            raise click.UsageError("--repo, --include and --exclude need a PATH")
        return configured
    match = next(
        (r for r in configured if r.path.resolve() == path.resolve()),
        None,
    )
    return [
        Root(
            path,
            repo or (match.repo if match else path.resolve().name),
            tuple(include) or (match.include if match else ()),
            tuple(exclude) or (match.exclude if match else ()),
        )
    ]


@click.group()
def knowledge() -> None:
    """Index files and cards, and search them (knowledge.db)."""


@knowledge.command("index")
@click.argument(
    "path",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--repo",
    help="The repository's name (default: the config root's repo, else the "
    "directory's name).",
)
@click.option("--include", multiple=True, help="Only files matching this glob.")
@click.option("--exclude", multiple=True, help="Leave out files matching this glob.")
@json_option
@config_option
@data_option
def index_command(
    path: Path | None,
    repo: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """Index the text files under PATH (default: the config's knowledge roots).

    Unchanged files (same sha256) are not indexed again; files gone since the
    last indexing are removed. .gitignore files are honoured.
    """
    target = Target(config_path, data)
    roots = roots_to_index(target.config, path, repo, include, exclude)
    out = Output()
    results = run_trio(_index, target.data_dir, roots, out)
    if as_json:
        out.json(
            [
                {
                    "repo": r.repo,
                    "added": r.added,
                    "changed": r.changed,
                    "removed": r.removed,
                    "unchanged": r.unchanged,
                    "skipped": [
                        {"path": s.path, "reason": s.reason} for s in r.skipped
                    ],
                    "position": r.position,
                }
                for r in results
            ]
        )
        return
    for r in results:
        out.line(
            f"{r.repo}: {len(r.added)} added, {len(r.changed)} changed, "
            f"{len(r.removed)} removed, {r.unchanged} unchanged, "
            f"{len(r.skipped)} skipped"
        )


async def _index(data_dir: Path, roots: list[Root], out: Output) -> list[IndexResult]:
    results = []
    async with open_cli_log(data_dir) as log, open_knowledge(log) as store:
        for root in roots:
            with out.progress(f"reading {root.repo}"):
                result = await store.index(
                    root.path,
                    repo=root.repo,
                    include=root.include,
                    exclude=root.exclude,
                    wait=False,
                )
            if result.position is not None:
                await _fold(store, result.position, f"embedding {root.repo}", out)
            results.append(result)
    return results


async def _fold(store: Knowledge, position: int, what: str, out: Output) -> None:
    """Wait for the projection to fold up to ``position``, moving a bar."""
    runner = store.runner
    start = runner.position
    with out.progress(what) as progress:
        while runner.position < position:
            progress(runner.position - start, position - start)
            # Wake up now and then to move the bar (the wait itself is
            # event-driven: it returns as soon as the position is reached).
            with trio.move_on_after(0.1):
                await runner.wait_for(position)
        progress(position - start, position - start)


@knowledge.command("search")
@click.argument("query")
@click.option("--repo", help="Search this repository only.")
@click.option(
    "--limit", "-k", type=click.IntRange(1, 1000), default=10, show_default=True
)
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@click.option("--fts5", is_flag=True, help="QUERY is FTS5 syntax, not plain words.")
@json_option
@config_option
@data_option
def search_command(
    query: str,
    repo: str | None,
    limit: int,
    mode: str,
    fts5: bool,
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """Search the indexed files and cards (hybrid: full text and vectors)."""
    data_dir = Target(config_path, data).existing()
    hits, files = run_trio(_search, data_dir, query, repo, limit, mode, fts5)
    out = Output()
    if as_json:
        out.json([jsonable(h) for h in hits])
        return
    if not files:
        out.note("nothing is indexed yet: `nerve knowledge index PATH --repo NAME`")
        return
    if not hits:
        out.note("no match")
        return
    for i, h in enumerate(hits, 1):
        title = f"  {escape(h.title)}" if h.title else ""
        out.print(
            f"[bold]{i:>2}. {escape(h.repo)}/{escape(h.path)}"
            f":{h.start_line}-{h.end_line}[/]  [dim]{h.kind} {h.score:.3f}[/]{title}"
        )
        out.line(f"    {compact(h.snippet, out.out.width - 4)}")


async def _search(
    data_dir: Path, query: str, repo: str | None, k: int, mode: Any, fts5: bool
) -> tuple[list[Hit], int]:
    async with open_cli_log(data_dir) as log, open_knowledge(log) as store:
        hits = await store.search(
            query, k, repo=repo, mode=mode, syntax="fts5" if fts5 else "words"
        )
        stats = await store.statistics()
    return hits, stats.files


@knowledge.command("stats")
@json_option
@config_option
@data_option
def stats_command(as_json: bool, config_path: Path | None, data: Path | None) -> None:
    """Indexed files, cards, chunks and repositories."""
    data_dir = Target(config_path, data).existing()
    stats = run_trio(_stats, data_dir)
    out = Output()
    if as_json:
        out.json(stats)
        return
    out.line(
        f"{stats.files} files ({stats.cards} cards), {stats.chunks} chunks in "
        f"{len(stats.repos)} repositories: {', '.join(stats.repos) or 'none'}; "
        f"embedder {stats.embedder} ({stats.dimension} dimensions)"
    )


async def _stats(data_dir: Path) -> Any:
    async with open_cli_log(data_dir) as log, open_knowledge(log) as store:
        return await store.statistics()
