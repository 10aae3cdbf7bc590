"""Every example runs to the end by itself, as `python examples/NAME.py DATA_DIR`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAFETY = 60  # seconds: a net against hangs, never an assertion

# What each example prints when it did its job.
EXPECTED = {
    "hello_log.py": ["hash chain: intact"],
    "hello_workflow.py": ["12 completed, 4 dropped"],
    "senses_reflex.py": ["report 3:", "the last signals"],
    "crash_resume.py": [
        "SIGKILL",
        "completed, result 55, attempt 2",
        "the download ran 1 time(s)",
    ],
    "replay_verify.py": [
        "archived ",
        "verify: the live projections match a replay",
        "hash chain: intact",
    ],
    "asyncio_app.py": ["completed", "the kernel drained and the trio guest run ended"],
    "knowledge_search.py": [
        "as 'nerve'",
        "knowledge.db:",
        "search: 'asyncio guest mode'",
        ".py:",  # a hit, as path:first-last line
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs(name: str, tmp_path: Path) -> None:
    with trio.fail_after(SAFETY):
        done = await trio.run_process(
            [
                sys.executable,
                "-W",
                "error",
                str(EXAMPLES / name),
                str(tmp_path / "data"),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    for text in EXPECTED[name]:
        assert text in out, out


async def test_an_example_runs_again_on_its_own_history(tmp_path: Path) -> None:
    """A second run finds the first one's history (no new day to archive, an
    existing log to add to) and still verifies."""
    for name in ("replay_verify.py",):
        for _ in range(2):
            with trio.fail_after(SAFETY):
                done = await trio.run_process(
                    [sys.executable, str(EXAMPLES / name), str(tmp_path / "data")],
                    capture_stdout=True,
                    capture_stderr=subprocess.STDOUT,
                    check=False,
                )
            assert done.returncode == 0, done.stdout.decode()


def readme_blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of one ``## section`` of README.md."""
    text = (EXAMPLES.parent / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0] for b in body.split(f"```{language}\n")[1:]]


def test_the_readme_embedding_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = readme_blocks("Embedding the kernel", "python")
    assert len(blocks) == 2  # trio, then asyncio (which reuses the first's app)
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.count("Hello, ada!") >= 2
