"""The `nerve` command: click's CliRunner on a data directory made by a kernel,
and `nerve run` as a real process (cross-process triggers, stop, reload).

Processes are awaited with bounded loops on what they print or on the log,
under `trio.fail_after` as a safety net: nothing asserts on timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from click.testing import CliRunner, Result

import nerve
from nerve._cli_serve import watch_files
from nerve.cli import cli
from nerve.projections import RunQueries

SAFETY = 30  # seconds: a net against hangs, never an assertion
DAY = 86_400.0

# -- a data directory with some history ------------------------------------------------


def history_app() -> nerve.App:
    app = nerve.App()

    @app.workflow("greet", concurrency=2)
    async def greet(run: nerve.Run) -> str:
        await run.say("user", f"please greet {run.payload['name']}")
        greeting: str = await run.step(
            "compose", lambda n: f"hello {n}", run.payload["name"]
        )
        await run.say("assistant", greeting)
        return greeting

    @app.workflow("fail")
    async def fail(run: nerve.Run) -> None:
        raise ValueError("no good")

    @app.sense("system", every=0.01)
    async def load(sense: nerve.Sense) -> int:
        return sense.computed

    return app


async def make_history(data_dir: Path) -> dict[str, str]:
    """Runs on two UTC days (one two days ago), a failure, signals, a blob."""
    ids: dict[str, str] = {}
    for offset, name in ((-2 * DAY, "old"), (0.0, "ada")):
        async with nerve.open_kernel(
            history_app(), data_dir, clock=lambda o=offset: time.time() + o
        ) as kernel:
            ids[name] = (
                await (await kernel.trigger("greet", {"name": name})).wait()
            ).run_id
            if offset == 0.0:
                failed = await (await kernel.trigger("fail")).wait()
                ids["fail"] = failed.run_id
                big = await kernel.trigger("greet", {"name": "x" * 70_000})
                ids["big"] = (await big.wait()).run_id
            start = kernel.log.head
            async for e in kernel.log.subscribe(after=start, types=["sense.signal"]):
                await kernel.projections["system"].wait_for(e.position)
                break
    return ids


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("history") / "data"
    ids = trio.run(make_history, data_dir)
    return data_dir, ids


@pytest.fixture
def history(made: tuple[Path, dict[str, str]], tmp_path: Path) -> Path:
    """A private copy of the module's history (tests may alter it)."""
    copy = tmp_path / "data"
    shutil.copytree(made[0], copy)
    return copy


@pytest.fixture
def ids(made: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return made[1]


def nerve_cli(*args: Any) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    # Errors are a message, never a traceback.
    assert "Traceback" not in result.stdout + result.stderr
    return result


def ok(*args: Any) -> Result:
    result = nerve_cli(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def error(code: int, *args: Any) -> str:
    result = nerve_cli(*args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stderr


# -- read commands ---------------------------------------------------------------------


def test_runs(history: Path, ids: dict[str, str]) -> None:
    text = ok("runs", "--data", history).stdout
    for run_id in ids.values():
        assert run_id in text
    assert "completed" in text
    assert "ValueError" in text
    rows = orjson.loads(ok("runs", "--data", history, "--json").stdout)
    assert [r["run_id"] for r in rows] == [
        ids["old"],
        ids["ada"],
        ids["fail"],
        ids["big"],
    ]
    assert rows[1]["result"] == "hello ada"
    assert rows[1]["queued_at"].endswith("+00:00")
    failed = orjson.loads(
        ok("runs", "--data", history, "--json", "-s", "failed").stdout
    )
    assert [r["run_id"] for r in failed] == [ids["fail"]]
    both = orjson.loads(
        ok(
            "runs",
            "--data",
            history,
            "--json",
            "--status",
            "failed,completed",
            "-n",
            "2",
        ).stdout
    )
    assert [r["run_id"] for r in both] == [ids["fail"], ids["big"]]
    assert (
        orjson.loads(ok("runs", "--data", history, "--json", "-w", "nope").stdout) == []
    )
    assert "did you mean 'failed'" in error(2, "runs", "--data", history, "-s", "faild")


def test_run_show(history: Path, ids: dict[str, str]) -> None:
    text = ok("run-show", ids["ada"], "--data", history).stdout
    assert f"run {ids['ada']}" in text
    assert "user: please greet ada" in text
    assert "assistant: hello ada" in text
    assert "#0 compose -> hello ada" in text
    assert "workflow.run.completed" in text
    shown = orjson.loads(
        ok("run-show", ids["ada"][-10:], "--data", history, "--json").stdout
    )
    assert shown["run"]["run_id"] == ids["ada"]
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"]
    assert shown["steps"] == [{"name": "compose", "result": "hello ada", "seq": 0}]
    assert shown["events"][0]["type"] == "workflow.run.queued"
    assert "no run 'nope'" in error(1, "run-show", "nope", "--data", history)


def test_log_tail_and_search(history: Path, ids: dict[str, str]) -> None:
    lines = ok("log", "tail", "-n", "3", "--data", history).stdout.splitlines()
    assert len(lines) == 3
    events = [
        orjson.loads(line)
        for line in ok(
            "log", "tail", "-n", "4", "--json", "--data", history
        ).stdout.splitlines()
    ]
    assert [e["position"] for e in events] == sorted(e["position"] for e in events)
    assert len(events) == 4
    runs_events = [
        orjson.loads(line)
        for line in ok(
            "log", "tail", "--stream", f"run-{ids['ada']}", "--json", "--data", history
        ).stdout.splitlines()
    ]
    assert runs_events[-1]["type"] == "workflow.run.completed"
    typed = ok("log", "tail", "--type", "workflow.run.failed", "--data", history).stdout
    assert "no good" in typed
    assert len(typed.splitlines()) == 1

    hits = orjson.loads(ok("log", "search", "ada", "--json", "--data", history).stdout)
    assert {h["event"]["stream"] for h in hits} >= {f"run-{ids['ada']}"}
    assert "ada" in ok("log", "search", "ada", "--data", history).stdout
    message = error(1, "log", "search", "ada AND (", "--data", history)
    assert "malformed search query" in message
    assert "--literal" in message
    assert (
        ok("log", "search", "ada AND (", "--literal", "--data", history).exit_code == 0
    )


def test_stats(history: Path, ids: dict[str, str]) -> None:
    report = orjson.loads(ok("stats", "--json", "--data", history).stdout)
    assert report["runs"] == {"fail": {"failed": 1}, "greet": {"completed": 3}}
    assert report["events_by_type"]["workflow.run.completed"] == 3
    assert report["blobs"]["count"] >= 1
    assert "signals:system" in report["projections"]
    text = ok("stats", "--data", history).stdout
    assert "events by type" in text
    assert "greet" in text


def test_commands_need_an_existing_log(tmp_path: Path) -> None:
    for args in (["runs"], ["log", "tail"], ["verify"], ["doctor"], ["stats"]):
        message = error(1, *args, "--data", tmp_path / "nowhere")
        assert "no nerve log in" in message
        assert not (tmp_path / "nowhere").exists()


# -- replay, verify, rebuild -----------------------------------------------------------


def test_replay_into_fresh_databases(history: Path, tmp_path: Path) -> None:
    into = tmp_path / "fresh"
    text = ok("replay", "--into", into, "--data", history).stdout
    assert "logs.db (workflow_runs)" in text
    assert "senses/system-senses.db (signals:system)" in text
    live = sqlite3.connect(history / "logs.db")
    fresh = sqlite3.connect(into / "logs.db")
    query = "SELECT * FROM workflow_runs ORDER BY run_id"
    assert fresh.execute(query).fetchall() == live.execute(query).fetchall()
    assert (into / "senses" / "system-senses.db").is_file()
    assert "exists" in error(1, "replay", "--into", into, "--data", history)


def test_replay_uses_the_config_sense_groups(history: Path, tmp_path: Path) -> None:
    config = tmp_path / "nerve.yaml"
    config.write_text("senses: {other: {s: {entry: m:f, every: 1s}}}\n")
    into = tmp_path / "fresh"
    ok("replay", "--into", into, "--data", history, "-c", config)
    assert (into / "senses" / "other-senses.db").is_file()
    assert not (into / "senses" / "system-senses.db").exists()


def test_verify_finds_tampering(history: Path) -> None:
    assert "hash chain: intact" in ok("verify", "--data", history).stdout
    report = orjson.loads(ok("verify", "--json", "--data", history).stdout)
    assert report["ok"]
    assert report["results"]["workflow_runs"]["differences"] == []

    db = sqlite3.connect(history / "logs.db")
    db.execute("UPDATE workflow_runs SET status = 'failed' WHERE workflow = 'greet'")
    db.commit()
    message = nerve_cli("verify", "--data", history)
    assert message.exit_code == 1
    assert "workflow_runs: 3 rows differ" in message.stdout
    # Rebuilding the projection from the history repairs it.
    assert (
        "rebuilt workflow_runs"
        in ok("projections", "rebuild", "workflow_runs", "--data", history).stdout
    )
    ok("verify", "--data", history)

    last = db.execute("SELECT max(position) FROM logs").fetchone()[0]
    db.execute("UPDATE logs SET payload = '{}' WHERE position = ?", (last - 1,))
    db.commit()
    db.close()
    result = nerve_cli("verify", "--data", history)
    assert result.exit_code == 1
    assert f"hash chain: broken at position {last - 1}" in result.stdout


def test_projections_list_and_rebuild(history: Path) -> None:
    rows = orjson.loads(ok("projections", "list", "--json", "--data", history).stdout)
    assert [r["name"] for r in rows] == ["workflow_runs", "signals:system"]
    assert rows[0]["lag"] == 0
    assert (
        "rebuilt signals:system"
        in ok("projections", "rebuild", "system", "--data", history).stdout
    )
    assert "did you mean 'system'" in error(
        1, "projections", "rebuild", "sytem", "--data", history
    )
    ok("verify", "--data", history)


# -- archive, backup, doctor -----------------------------------------------------------


def test_archive_keeps_the_history_readable(history: Path, ids: dict[str, str]) -> None:
    before = ok("log", "tail", "-n", "1000", "--json", "--data", history).stdout
    text = (
        ok("archive", "--data", history).stdout
        + nerve_cli("archive", "--data", history).stderr
    )
    assert "nothing to archive (no whole UTC day older than 30d)" in text
    days = orjson.loads(
        ok("archive", "--older-than", "1d", "--json", "--data", history).stdout
    )
    assert len(days) == 1
    assert (history / "archive" / "logs" / f"{days[0]['day']}.jsonl").is_file()
    # The archive is the log's cold tier: reading, run-show and verify still see it.
    assert ok("log", "tail", "-n", "1000", "--json", "--data", history).stdout == before
    assert "hello old" in ok("run-show", ids["old"], "--data", history).stdout
    assert "1 archived days" in ok("verify", "--data", history).stdout
    assert "--older-than" in error(
        2, "archive", "--older-than", "3x", "--data", history
    )


def test_backup(history: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    result = orjson.loads(ok("backup", dest, "--json", "--data", history).stdout)
    assert result["blobs"] >= 1
    assert (dest / "logs.db").is_file()
    assert "hash chain: intact" in ok("verify", "--data", dest).stdout
    assert "exists" in error(1, "backup", dest, "--data", history)


def test_prune_blobs(history: Path) -> None:
    blobs = history / "blobs"
    stored = sorted(p for p in blobs.rglob("*") if p.is_file())
    assert stored  # the history holds blobs its events name
    orphan = blobs / ("ab" * 32)[:2] / ("ab" * 32)[2:]
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"named by no event")
    for path in [*stored, orphan]:
        os.utime(path, (0, 0))  # all old
    text = ok("prune-blobs", "--data", history).stdout
    assert "pruned " + "ab" * 32 in text
    assert "1 blobs pruned" in text
    assert sorted(p for p in blobs.rglob("*") if p.is_file()) == stored
    assert orjson.loads(ok("prune-blobs", "--json", "--data", history).stdout) == []
    assert "hash chain: intact" in ok("verify", "--data", history).stdout


def test_doctor(history: Path) -> None:
    text = ok("doctor", "--data", history).stdout
    assert "healthy" in text
    assert "synchronous=FULL" in text
    report = orjson.loads(ok("doctor", "--json", "--data", history).stdout)
    assert report["ok"]
    names = {(c["subject"], c["name"]) for c in report["checks"]}
    assert ("logs.db", "integrity") in names
    assert ("senses/system-senses.db", "journal_mode") in names
    # Damage one blob: the doctor finds it and exits 1.
    blob = next(p for p in (history / "blobs").rglob("*") if p.is_file())
    blob.write_bytes(b"damaged")
    result = nerve_cli("doctor", "--data", history)
    assert result.exit_code == 1
    assert "no longer match their sha256" in result.stdout


def test_doctor_checks_the_archive(history: Path) -> None:
    ok("archive", "--older-than", "1d", "--data", history)
    day = next((history / "archive" / "logs").glob("*.jsonl"))
    day.write_bytes(day.read_bytes() + b"\n")
    report = orjson.loads(nerve_cli("doctor", "--json", "--data", history).stdout)
    assert not report["ok"]
    assert any(
        c["subject"] == "archive" and c["level"] == "problem" for c in report["checks"]
    )


# -- config and data dir resolution ----------------------------------------------------


def test_data_dir_from_the_config(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nerve.yaml").write_text("data_dir: data\n")
    assert history == tmp_path / "data"
    assert "greet" in ok("runs").stdout  # ./nerve.yaml -> ./data
    (tmp_path / "nerve.yaml").write_text("dataDir: elsewhere\n")
    assert "no nerve log in elsewhere" in error(1, "runs")
    assert "greet" in ok("runs", "--data", history).stdout  # --data wins


def test_a_bad_config_lists_its_problems(tmp_path: Path) -> None:
    config = tmp_path / "nerve.yaml"
    config.write_text(
        "workflows:\n  greet: {entry: x:y, concurrency: two, maxQeue: 1}\n"
    )
    message = error(1, "runs", "-c", config)
    assert "2 problems" in message
    assert "workflows.greet.concurrency: expected an integer >= 1, got 'two'" in message
    assert "did you mean 'maxQueue'?" in message
    assert "no such file" in error(1, "runs", "-c", tmp_path / "missing.yaml")
    assert "no such file" in error(1, "run", tmp_path / "missing.yaml")


def test_trigger_without_a_kernel_records_the_request(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "nerve.yaml"
    config.write_text("workflows: {greet: {entry: m:f}}\n")
    assert "did you mean 'greet'" in error(
        1, "trigger", "gret", "-c", config, "--data", data
    )
    assert "not valid JSON" in error(
        2, "trigger", "greet", "-p", "{bad", "--data", data
    )
    run_id = ok(
        "trigger", "greet", "-p", '{"name": "ada"}', "--data", data, "-c", config
    )
    events = ok("log", "tail", "--json", "--data", data).stdout.splitlines()
    request = orjson.loads(events[-1])
    assert request["type"] == "workflow.trigger.requested"
    assert request["data"] == {
        "workflow": "greet",
        "run_id": run_id.stdout.strip(),
        "payload": {"name": "ada"},
    }
    payload_file = tmp_path / "payload.json"
    payload_file.write_text("[1, 2]")
    again = orjson.loads(
        ok(
            "trigger",
            "greet",
            "-p",
            f"@{payload_file}",
            "--run-id",
            "r1",
            "--json",
            "--data",
            data,
        ).stdout
    )
    assert again == {"run_id": "r1", "workflow": "greet"}


def test_help_lists_every_command() -> None:
    text = ok("--help").stdout
    for command in (
        "run", "trigger", "runs", "run-show", "log", "replay", "projections",
        "verify", "archive", "prune-blobs", "backup", "doctor", "stats",
        "knowledge",
    ):  # fmt: skip
        assert f"  {command} " in text


# -- the reload watcher, in virtual time -----------------------------------------------


async def test_watch_files_polls_mtimes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    watched = tmp_path / "flows.py"
    watched.write_text("v1")
    extra: list[Path] = []
    send, receive = trio.open_memory_channel[str](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_files, lambda: [watched, *extra], send, 1.0)
        await trio.sleep(10)
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()
        os.utime(watched, ns=(0, 10**9))
        assert await receive.receive() == "reload"
        extra.append(tmp_path / "new.py")  # a file joining the set is no change
        await trio.sleep(10)
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()
        watched.unlink()
        assert await receive.receive() == "reload"
        watched.write_text("v2")
        assert await receive.receive() == "reload"
        nursery.cancel_scope.cancel()


# -- `nerve run` as a process ----------------------------------------------------------


class Server:
    """A `nerve run` child process and what it printed."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = ""

    async def wait_for_line(self, text: str) -> str:
        assert self.process.stdout is not None
        while True:
            for line in self.output.splitlines():
                if text in line:
                    self.output = self.output.split(line, 1)[1]
                    return line
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"nerve run exited before printing {text!r}")
            self.output += chunk.decode()


def write_project(root: Path, version: str) -> Path:
    (root / "cli_flows.py").write_text(
        textwrap.dedent(
            f"""
            import trio

            async def greet(run):
                await run.say("assistant", "hi")
                return {{"greeted": run.payload, "version": {version!r}}}

            async def slow(run):
                await trio.sleep_forever()
            """
        )
    )
    config = root / "nerve.yaml"
    config.write_text(
        textwrap.dedent(
            """
            workflows:
              greet: {entry: cli_flows:greet, concurrency: 2}
              slow: {entry: cli_flows:slow}
            data_dir: data
            """
        )
    )
    return config


async def start_server(config: Path, *args: str) -> Server:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "nerve.cli", "run", str(config), "--grace", "0", *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    server = Server(process)
    await server.wait_for_line("nerve: running")
    return server


async def status_of(
    log: nerve.Log, run_id: str, wanted: str
) -> nerve.projections.RunRecord:
    """Follow the run's stream (another process writes it) until ``wanted``."""
    queries = RunQueries(log)
    async for _ in log.subscribe(stream=f"run-{run_id}"):
        record = await queries.get(run_id)
        if record is not None and record.status == wanted:
            return record
    raise AssertionError("the log closed")


async def nerve_process(*args: Any) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "nerve.cli", *map(str, args)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_trigger_reaches_a_kernel_in_another_process(tmp_path: Path) -> None:
    config = write_project(tmp_path, "v1")
    with trio.fail_after(SAFETY):
        server = await start_server(config)
        try:
            done = await nerve_process(
                "trigger", "greet", "-p", '"ada"', "--wait", "--json", "-c", config
            )
            assert done.returncode == 0, done.stderr
            record = orjson.loads(done.stdout)
            assert record["status"] == "completed"
            assert record["result"] == {"greeted": "ada", "version": "v1"}
            line = await server.wait_for_line(f"{record['run_id']}  completed")
            assert "v1" in line
        finally:
            server.process.send_signal(signal.SIGTERM)
            assert await server.process.wait() == 0
        await server.wait_for_line("nerve: stopped")


async def test_reload_interrupts_runs_past_the_grace_and_uses_new_code(
    tmp_path: Path,
) -> None:
    config = write_project(tmp_path, "v1")
    data = tmp_path / "data"
    with trio.fail_after(SAFETY):
        server = await start_server(config, "--reload")
        try:
            async with nerve.open_log(data) as log:
                slow = await nerve.request_trigger(log, "slow")
                await status_of(log, slow, "started")

                # 1. --reload: the entry module changed on disk.
                write_project(tmp_path, "v2")
                await server.wait_for_line("nerve: reloaded")
                record = await status_of(log, slow, "interrupted")
                assert record.error == "reload"
                greet = await nerve.request_trigger(log, "greet", "bob")
                assert (await status_of(log, greet, "completed")).result == {
                    "greeted": "bob",
                    "version": "v2",
                }

                # 2. A config that does not load is refused; the kernel goes on.
                config.write_text(
                    "workflows: {greet: {entry: cli_flows:greet, concurrency: zero}}\n"
                )
                await server.wait_for_line("reload refused")
                greet = await nerve.request_trigger(log, "greet", "cy")
                await status_of(log, greet, "completed")

                # 3. SIGHUP reloads too (the config is fixed in the meantime).
                write_project(tmp_path, "v3")
                await server.wait_for_line("nerve: reloaded")
                server.process.send_signal(signal.SIGHUP)
                await server.wait_for_line("nerve: reloaded")
                greet = await nerve.request_trigger(log, "greet", "dee")
                assert (await status_of(log, greet, "completed")).result[
                    "version"
                ] == "v3"
        finally:
            server.process.send_signal(signal.SIGINT)
            assert await server.process.wait() == 0


# -- knowledge -------------------------------------------------------------------------


def write_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "resume.py").write_text(
        '"""Resuming a crashed run from its step journal."""\n\n'
        "def resume(run):\n    return run.journal\n"
    )
    (root / "README.md").write_text("# Tree\n\nThe grace period drains runs.\n")
    (root / ".knowledge").mkdir()
    (root / ".knowledge" / "card.md").write_text(
        "---\ntitle: Drain\n---\nShutdown drains with a grace period.\n"
    )
    return root


def test_knowledge_index_and_search(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree")
    data = tmp_path / "data"
    text = ok("knowledge", "index", tree, "--repo", "tree", "--data", data).stdout
    assert "tree: 3 added, 0 changed, 0 removed, 0 unchanged" in text
    again = ok("knowledge", "index", tree, "--repo", "tree", "--data", data).stdout
    assert "0 added, 0 changed, 0 removed, 3 unchanged" in again

    hits = orjson.loads(
        ok(
            "knowledge", "search", "crashed run journal", "--json", "--data", data
        ).stdout
    )
    assert hits[0]["path"] == "src/resume.py"
    assert hits[0]["repo"] == "tree"
    shown = ok("knowledge", "search", "grace period", "-k", "2", "--data", data).stdout
    assert "tree/" in shown
    assert (
        "no match"
        in nerve_cli(
            "knowledge", "search", "grace", "--repo", "other", "--data", data
        ).stderr
    )
    stats = orjson.loads(ok("knowledge", "stats", "--json", "--data", data).stdout)
    assert (stats["files"], stats["cards"], stats["repos"]) == (3, 1, ["tree"])
    assert "malformed" in error(
        1, "knowledge", "search", "grace AND (", "--fts5", "--data", data
    )


def test_knowledge_index_uses_the_config_roots(tmp_path: Path) -> None:
    write_tree(tmp_path / "tree")
    config = tmp_path / "nerve.yaml"
    config.write_text(
        "knowledge:\n  roots:\n    - {path: tree, repo: docs, include: ['*.md']}\n"
        "data_dir: data\n"
    )
    text = ok("knowledge", "index", "-c", config).stdout
    assert "docs: 2 added" in text  # README.md and the card (cards always count)
    assert "PATH" in error(2, "knowledge", "index", "--data", tmp_path / "d2")
