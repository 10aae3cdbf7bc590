"""Helpers for the tests that run nerve in a child process and kill it."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import trio


def load_child(name: str) -> ModuleType:
    """Import ``tests/<name>.py`` (a child program) to share its helpers."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Lines:
    """Complete lines from a byte stream; a last line cut short is dropped."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""
        self._eof = False

    async def next(self) -> str | None:
        while b"\n" not in self._buf:
            if self._eof:
                return None
            chunk = await self._stream.receive_some(1 << 16)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()


@contextlib.asynccontextmanager
async def reaped(proc: trio.Process) -> AsyncIterator[trio.Process]:
    """Kill the child at exit if it still runs, wait for it, close its stdout."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def next_line(lines: Lines, proc: trio.Process, stderr_path: Path) -> str:
    """The child's next line; fails the test if the child exited by itself."""
    line = await lines.next()
    if line is None:
        await proc.wait()
        raise AssertionError(
            f"child exited by itself (status {proc.returncode}):\n"
            + await trio.Path(stderr_path).read_text(errors="replace")
        )
    return line
