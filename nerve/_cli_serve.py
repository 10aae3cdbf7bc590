"""``nerve run``: the kernel in the foreground, with graceful stop and hot reload.

The kernel runs until SIGINT (Ctrl-C) or SIGTERM, then drains: no new runs,
running runs get the grace period, those still running are cancelled and
recorded ``interrupted``. A second signal during the drain cancels them at
once.

SIGHUP, or with ``--reload`` a change to the config file or an entry module
(their mtimes are polled every second), reloads: the new config is read and
its entry modules re-imported first, and if that fails the kernel keeps
running the definitions it has (the error is printed). Otherwise the kernel
drains as above (runs still going after the grace period are recorded
``interrupted``, reason ``reload``) and starts again with the new
definitions; queued runs stay queued across the restart.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, Literal

import trio
from rich.markup import escape

from nerve.actors import App
from nerve.config import Config, load_config
from nerve.events import ConfigError, Log
from nerve.events._vocabulary import RUN_STATUS_OF_TYPE, run_id_of
from nerve.kernel import Kernel, open_kernel

from ._cli_output import Output, compact, status_text, when

Command = Literal["stop", "reload"]
POLL_INTERVAL: Final = 1.0

Snapshot = dict[str, tuple[int, int] | None]


def snapshot(files: Iterable[Path]) -> Snapshot:
    """(mtime in ns, size) of each file; None for one that is missing."""
    out: Snapshot = {}
    for f in files:
        try:
            st = f.stat()
        except OSError:
            out[str(f)] = None
        else:
            out[str(f)] = (st.st_mtime_ns, st.st_size)
    return out


async def watch_files(
    files: Callable[[], Iterable[Path]],
    send: trio.MemorySendChannel[Command],
    interval: float = POLL_INTERVAL,
) -> None:
    """Send ``"reload"`` when one of ``files()`` changes (polled every ``interval``).

    ``files`` is asked again at every poll, so the set follows the config
    (a reload may add entry modules). A file added to the set is not a change;
    a file whose mtime or size changed, or that appeared or vanished, is.
    """
    seen = snapshot(files())
    while True:
        await trio.sleep(interval)
        now = snapshot(files())
        changed = [f for f, stamp in now.items() if f in seen and seen[f] != stamp]
        seen = now
        if changed:
            await send.send("reload")


async def listen_signals(send: trio.MemorySendChannel[Command]) -> None:
    """Turn SIGINT/SIGTERM into ``"stop"`` and SIGHUP into ``"reload"``."""
    wanted = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):
        wanted.append(signal.SIGHUP)
    with trio.open_signal_receiver(*wanted) as signals:
        async for signum in signals:
            hup = getattr(signal, "SIGHUP", None)
            await send.send("reload" if signum == hup else "stop")


def watched_files(config: Config) -> list[Path]:
    """The config file and the source files of its entry modules."""
    files = [config.source] if config.source is not None else []
    for name in config.entry_modules():
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            files.append(Path(path))
    return files


def describe(app: App) -> str:
    workflows = ", ".join(
        f"{w.name} ({w.concurrency} slot{'s' if w.concurrency > 1 else ''}, "
        f"{w.overflow}{f' {w.max_queue}' if w.overflow == 'queue' else ''})"
        for w in app.workflows.values()
    )
    senses = ", ".join(
        f"{g}.{s.name} (every {s.every:g}s)"
        for g, specs in app.senses.items()
        for s in specs.values()
    )
    return f"workflows: {workflows or 'none'}; senses: {senses or 'none'}"


class Server:
    """One ``nerve run``: the kernel, restarted at each reload."""

    def __init__(
        self,
        config_path: Path,
        data_dir: Path,
        *,
        grace: float,
        reload: bool,
        quiet: bool,
        out: Output,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.grace = grace
        self.reload = reload
        self.quiet = quiet
        self.out = out
        self.poll_interval = poll_interval
        self.config: Config | None = None
        self.stopping = False
        self.generation = 0
        self._send, self._commands = trio.open_memory_channel[Command](64)

    def say(self, text: str) -> None:
        self.out.line(f"nerve: {text}")

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve until stopped.

        Raises:
            ConfigError: the config cannot be used at start (at a reload, the
                error is printed and the running definitions are kept).
        """
        config = load_config(self.config_path)
        app = config.build_app()
        self.config = config
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(listen_signals, self._send.clone())
            if self.reload:
                nursery.start_soon(
                    watch_files,
                    lambda: watched_files(self.config) if self.config else [],
                    self._send.clone(),
                    self.poll_interval,
                )
            while True:
                self.generation += 1
                next_app = await self._serve(app)
                if next_app is None:
                    break
                app = next_app
            nursery.cancel_scope.cancel()

    def request(self, command: Command) -> None:
        """Ask the server to stop or reload (what the signals do)."""
        self._send.send_nowait(command)

    async def _serve(self, app: App) -> App | None:
        """One kernel's life. Returns the app to restart with, or None: stop."""
        async with open_kernel(app, self.data_dir, grace=self.grace) as kernel:
            what = "running" if self.generation == 1 else "reloaded"
            self.say(
                f"{what} on {self.data_dir} (pid {os.getpid()}); {describe(app)}. "
                "Ctrl-C stops"
                + (", SIGHUP reloads" if hasattr(signal, "SIGHUP") else "")
            )
            async with trio.open_nursery() as nursery:
                printer = TransitionPrinter(kernel.log, self.out)
                if not self.quiet:
                    await nursery.start(printer.run)
                next_app = await self._wait_for_command()
                reason = "shutdown" if next_app is None else "reload"
                if any(a.running for a in kernel.workflows.values()):
                    self.say(
                        f"{'stopping' if next_app is None else 'reloading'}: "
                        f"draining running runs for up to {self.grace:g} s "
                        "(a second Ctrl-C interrupts them now)"
                    )
                await self._drain(kernel, reason)
                if not self.quiet:
                    with trio.move_on_after(1):
                        await printer.wait_for(kernel.log.head)
                nursery.cancel_scope.cancel()
        if next_app is None or self.stopping:
            self.say("stopped")
            return None
        return next_app

    async def _wait_for_command(self) -> App | None:
        while True:
            command = await self._commands.receive()
            if command == "stop":
                self.stopping = True
                return None
            try:
                config = load_config(self.config_path)
                app = config.build_app(reload=True)
            except ConfigError as e:
                self.say(f"reload refused, still running the previous definitions: {e}")
                continue
            self.config = config
            return app

    async def _drain(self, kernel: Kernel, reason: str) -> None:
        """What leaving `open_kernel` does, with our reason recorded for the
        runs it interrupts, and a second stop cutting the grace period."""
        kernel.closing = True
        for senses in kernel.senses.values():
            senses.stop()
        async with trio.open_nursery() as watcher:

            async def interrupt_on_stop() -> None:
                while True:
                    if await self._commands.receive() == "stop":
                        self.stopping = True
                        self.say("interrupting running runs now")
                        for actor in kernel.workflows.values():
                            actor.interrupt_all(f"{reason} (interrupted by a signal)")

            watcher.start_soon(interrupt_on_stop)
            async with trio.open_nursery() as drains:
                for actor in kernel.workflows.values():
                    drains.start_soon(actor.drain, self.grace, reason)
            watcher.cancel_scope.cancel()


class TransitionPrinter:
    """Prints one line per run transition as it is committed."""

    def __init__(self, log: Log, out: Output) -> None:
        self.log = log
        self.out = out
        self.position = log.head
        self._moved = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        reader = self.log.subscribe(after=self.position, types=RUN_STATUS_OF_TYPE)
        task_status.started()
        while (got := await reader.next_page()) is not None:
            events, scanned = got
            for e in events:
                status = RUN_STATUS_OF_TYPE[e.type]
                run_id = run_id_of(e.stream) or e.stream
                data = e.data
                detail = ""
                if status == "queued":
                    detail = f"{data.workflow} {compact(data.payload, 60)}"
                elif status == "started" and data.resumed:
                    detail = f"resumed, attempt {data.attempt}"
                elif status == "completed":
                    detail = compact(data.result, 80)
                elif status == "failed":
                    detail = f"{data.error_type}: {compact(data.message, 80)}"
                elif hasattr(data, "reason"):
                    detail = compact(data.reason, 80)
                self.out.print(
                    f"{when(e.ts, date=False)}  {run_id}  {status_text(status)}"
                    f"  {escape(detail)}"
                )
            self.position = scanned
            moved, self._moved = self._moved, trio.Event()
            moved.set()

    async def wait_for(self, position: int) -> None:
        while self.position < position:
            await self._moved.wait()
