"""nerve.yaml: structuring, every problem at once with its key path, entry points."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import nerve
from nerve.config import (
    Config,
    ConfigFileError,
    load_config,
    parse_config,
    parse_duration,
)


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigFileError) as info:
        parse_config(textwrap.dedent(text), source="nerve.yaml")
    assert isinstance(info.value, nerve.ConfigError)
    return info.value.problems


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A directory for a config file and its entry modules, cleaned from
    sys.modules and sys.path afterwards."""
    before = set(sys.modules)
    path_before = list(sys.path)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]
    sys.path[:] = path_before


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_the_seed_shape_in_both_spellings() -> None:
    seed = """
    workflows:
      my-workflow:
        entry: flows:run
        concurrency: 2      # Max parallel threads
        overflow: "queue"   # or "drop"
        maxQueue: 10        # Queue depth limit
    """
    config = parse_config(textwrap.dedent(seed))
    w = config.workflows["my-workflow"]
    assert (w.concurrency, w.overflow, w.max_queue, w.resume) == (2, "queue", 10, True)
    snake = parse_config(textwrap.dedent(seed).replace("maxQueue", "max_queue"))
    assert snake.workflows == config.workflows


def test_a_full_config() -> None:
    config = parse_config(
        textwrap.dedent(
            """
            workflows:
              greet: {entry: flows:greet, overflow: drop, resume: false}
            senses:
              system:
                disk: {entry: flows:disk, every: 1m30s, keepLast: null}
                load: {entry: flows:load, every: 0.5}
            reflexes:
              - {signal: system.disk, workflow: greet, when: flows:full}
            knowledge:
              roots:
                - {path: ., repo: nerve, include: ["*.py"], exclude: "tests/*"}
            archive: {retention: 7d}
            dataDir: var/data
            """
        ),
        source="/srv/app/nerve.yaml",
    )
    assert config.workflows["greet"].overflow == "drop"
    assert config.senses["system"]["disk"].every == 90.0
    assert config.senses["system"]["disk"].keep_last is None
    assert config.senses["system"]["load"].every == 0.5
    assert config.reflexes[0].when == "flows:full"
    root = config.knowledge.roots[0]
    assert (root.repo, root.include, root.exclude) == ("nerve", ("*.py",), ("tests/*",))
    assert config.archive.retention == timedelta(days=7)
    assert config.data_path == Path("/srv/app/var/data")
    assert list(config.entries())[-1] == ("reflexes[0].when", "flows:full")


def test_an_empty_file_is_an_empty_config() -> None:
    assert parse_config("") == Config()
    assert parse_config("workflows:\nsenses:\n").workflows == {}


def test_every_problem_at_once_with_path_and_value() -> None:
    found = problems(
        """
        workflows:
          greet:
            entry: flows:greet
            concurrency: two
            overflow: fifo
            maxQeue: 10
          other:
            entry: flows
            max_queue: -1
        senses:
          system:
            disk: {entry: flows:disk, every: "5 s", keepLast: 0}
        reflexes:
          - {signal: system.dsk, workflow: gret}
        archive: {retention: 30days}
        """
    )
    assert found == (
        "workflows.greet.concurrency: expected an integer >= 1, got 'two'",
        "workflows.greet.overflow: expected one of 'queue', 'drop', got 'fifo'",
        "workflows.greet.maxQeue: unknown key; did you mean 'maxQueue'?",
        "workflows.other.entry: expected 'module:function' (like 'flows:greet'), "
        "got 'flows'",
        "workflows.other.max_queue: expected an integer >= 0, got -1",
        "senses.system.disk.every: expected a duration like '5s', '1m', '1h30m', "
        "'30d' or a number of seconds, got '5 s'",
        "senses.system.disk.keepLast: expected an integer >= 1 or null (keep every "
        "signal), got 0",
        "archive.retention: expected a duration like '5s', '1m', '1h30m', '30d' or "
        "a number of seconds, got '30days'",
        "reflexes[0].signal: no sense 'system.dsk' is configured; did you mean "
        "'system.disk'?",
        "reflexes[0].workflow: no workflow 'gret' is configured; did you mean 'greet'?",
    )


def test_the_message_names_the_file_and_counts() -> None:
    with pytest.raises(ConfigFileError) as info:
        parse_config("workflows: {a: {entry: x:y, concurrency: 0}}", source="n.yaml")
    assert str(info.value) == (
        "n.yaml: workflows.a.concurrency: expected an integer >= 1, got 0"
    )
    with pytest.raises(ConfigFileError) as info:
        parse_config("workflows: {a: {concurrency: 0}}", source="n.yaml")
    assert str(info.value).splitlines() == [
        "n.yaml: 2 problems",
        "  workflows.a.entry: required key is missing",
        "  workflows.a.concurrency: expected an integer >= 1, got 0",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("workflowz: {}", "workflowz: unknown key; did you mean 'workflows'?"),
        ("data_dir: d\ndataDir: e", "dataDir: given twice, as 'data_dir' and"),
        ("workflows: [a, b]", "workflows: expected a mapping of workflow name"),
        ("workflows: {a: 3}", "workflows.a: expected a mapping (a workflow"),
        ("workflows: {a/b: {entry: x:y}}", "workflows.a/b: a workflow name must not"),
        ("workflows: {a: {entry: x:y, resume: yes please}}", "workflows.a.resume"),
        ("workflows: {a: {entry: x:y, concurrency: 1.5}}", "got 1.5"),
        ("workflows: {a: {entry: x:y, concurrency: true}}", "got True"),
        ("workflows: {a: {entry: 12}}", "workflows.a.entry: expected 'module:func"),
        ("senses: {a.b: {}}", "senses.a.b: a sense group name must not contain '.'"),
        ("senses: {g: {s: {entry: x:y}}}", "senses.g.s.every: required key is missing"),
        ("senses: {g: {s: {entry: x:y, every: '5'}}}", "(add a unit: '5s')"),
        ("senses: {g: {s: {entry: x:y, every: 0}}}", "expected a duration > 0"),
        ("reflexes: {signal: a.b}", "reflexes: expected a list of reflexes"),
        ("reflexes: [{signal: nodot, workflow: w}]", "reflexes[0].signal: expected"),
        ("reflexes: [{signal: a.b, workflow: w, whn: x:y}]", "did you mean 'when'?"),
        ("knowledge: {roots: [{repo: r}]}", "knowledge.roots[0].path: required key"),
        ("archive: {retention: -1d}", "archive.retention: expected a duration"),
        ("dataDir: 5", "dataDir: expected a path or null"),
        ("- a\n- b", "expected a mapping (the top level"),
    ],
)
def test_one_problem(text: str, problem: str) -> None:
    found = problems(text)
    assert any(problem in p for p in found), found


def test_yaml_errors_name_the_line() -> None:
    assert problems("workflows: [\n") == (
        "line 2, column 1: invalid YAML: while parsing a flow node expected the "
        "node content, but found '<stream end>'",
    )
    assert problems("a: 1\na: 2\n") == (
        "line 2, column 1: invalid YAML: key 'a' is given twice (first on line 1)",
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1.5s", 1.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["5", "5 s", " 5s", "5sec", "-5s", "s", "", "1h 30m", True, None, [1]]
)
def test_durations_are_strict(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_zero_durations() -> None:
    with pytest.raises(ValueError, match="> 0"):
        parse_duration("0s")
    assert parse_duration("0d", allow_zero=True) == 0.0


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigFileError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load_config(tmp_path / "bad.yaml")


async def test_build_app_imports_entries_next_to_the_file(project: Path) -> None:
    write(
        project / "cfg_flows.py",
        """
        async def greet(run):
            return f"hello {run.payload}"

        async def disk(sense):
            return 1

        def full(value):
            return value > 0
        """,
    )
    config = load_config(
        write(
            project / "nerve.yaml",
            """
            workflows:
              greet: {entry: cfg_flows:greet, concurrency: 2, maxQueue: 3}
            senses:
              system:
                disk: {entry: cfg_flows:disk, every: 2s, keepLast: 5}
            reflexes:
              - {signal: system.disk, workflow: greet, when: cfg_flows:full}
            """,
        )
    )
    app = config.build_app()
    spec = app.workflows["greet"]
    assert (spec.concurrency, spec.overflow, spec.max_queue) == (2, "queue", 3)
    assert app.senses["system"]["disk"].every == 2.0
    assert app.senses["system"]["disk"].keep_last == 5
    assert app.reflexes[0].when is not None
    assert app.reflexes[0].when(1)
    async with nerve.open_kernel(app, project / "data") as kernel:
        outcome = await (await kernel.trigger("greet", "ada")).wait()
    assert outcome.result == "hello ada"


def test_build_app_reports_every_entry_problem(project: Path) -> None:
    write(
        project / "cfg_bad.py",
        """
        def sync_workflow(run):
            pass

        not_callable = 3
        """,
    )
    write(project / "cfg_broken.py", "raise RuntimeError('boom at import')\n")
    write(project / "cfg_syntax.py", "def (:\n")
    config = load_config(
        write(
            project / "nerve.yaml",
            """
            workflows:
              a: {entry: cfg_missing:fn}
              b: {entry: cfg_bad:sync_workflow}
              c: {entry: cfg_bad:nope}
              d: {entry: cfg_broken:fn}
              e: {entry: cfg_syntax:fn}
            senses:
              g: {s: {entry: cfg_bad:nope, every: 1s}}
            reflexes:
              - {signal: g.s, workflow: a, when: cfg_bad:not_callable}
            """,
        )
    )
    with pytest.raises(ConfigFileError) as info:
        config.build_app()
    found = info.value.problems
    assert found[0] == (
        "workflows.a.entry: cannot import module 'cfg_missing': no module named "
        "'cfg_missing' (entry modules are looked up next to the config file and "
        "on sys.path)"
    )
    assert found[1].startswith(
        "workflows.b.entry: 'cfg_bad:sync_workflow' is not an async function"
    )
    assert found[2] == (
        "workflows.c.entry: module 'cfg_bad' has no attribute 'nope' "
        "(entry 'cfg_bad:nope')"
    )
    assert found[3] == (
        "workflows.d.entry: importing module 'cfg_broken' failed: RuntimeError: "
        "boom at import"
    )
    assert found[4].startswith(
        "workflows.e.entry: importing module 'cfg_syntax' failed: SyntaxError"
    )
    assert found[5].startswith("senses.g.s.entry: module 'cfg_bad' has no attribute")
    assert (
        found[6] == "reflexes[0].when: 'cfg_bad:not_callable' is not callable (got 3)"
    )
    assert len(found) == 7


def test_build_app_reload_picks_up_edited_code(project: Path) -> None:
    module = write(project / "cfg_reload.py", "async def fn(run):\n    return 'v1'\n")
    config = load_config(
        write(project / "nerve.yaml", "workflows: {w: {entry: cfg_reload:fn}}\n")
    )
    first = config.build_app().workflows["w"].fn
    # Same size, same second: a stale .pyc would be trusted without care.
    module.write_text("async def fn(run):\n    return 'v2'\n")
    assert config.build_app().workflows["w"].fn is first  # no reload asked
    second = config.build_app(reload=True).workflows["w"].fn
    assert second is not first
    assert "v2" in second.__code__.co_consts


def test_the_readme_config_parses() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## nerve.yaml\n", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(block)
    assert config.workflows["greet"].max_queue == 10
    assert config.senses["system"]["disk"].every == 30.0
    assert config.reflexes[0].when == "flows:nearly_full"
    assert config.knowledge.roots[0].include == ("*.py", "*.md")
