"""Helpers for the tests that run nerve in a child process and kill it."""

from __future__ import annotations

import importlib.util
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
