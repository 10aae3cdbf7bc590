"""The public names people import, and the direction of imports between layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nerve
import nerve.events

CONTRACT = {
    "open_log",
    "Log",
    "NewEvent",
    "RecordedEvent",
    "AppendResult",
    "NO_STREAM",
    "STREAM_EXISTS",
    "NerveError",
    "WrongExpectedVersion",
    "DuplicateIdempotencyKey",
    "EventEncodingError",
    "event",
}

PACKAGE = Path(nerve.__file__).parent
# events <- projections <- actors <- kernel/cli: a layer imports only lower ones.
LAYERS = ["events", "projections", "actors"]


def test_contract_names_are_exported() -> None:
    missing = sorted(n for n in CONTRACT if not hasattr(nerve, n))
    assert not missing


def test_errors_share_one_root() -> None:
    errors = [
        getattr(nerve, n)
        for n in dir(nerve)
        if isinstance(getattr(nerve, n), type) and n.endswith(("Error", "Version"))
    ]
    assert errors
    for cls in errors:
        assert issubclass(cls, nerve.NerveError), cls


def test_public_names_are_reexported_from_private_modules() -> None:
    for name in nerve.events.__all__ if hasattr(nerve.events, "__all__") else ():
        assert hasattr(nerve.events, name)
    assert nerve.open_log.__module__ == "nerve.events._log"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                mod = ".".join(base + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            found.add(mod)
    return {m for m in found if m.startswith("nerve")}


def test_layers_import_one_way() -> None:
    for i, layer in enumerate(LAYERS):
        higher = LAYERS[i + 1 :]
        for path in (PACKAGE / layer).rglob("*.py"):
            for mod in _imports(path):
                sub = mod.split(".")[1] if "." in mod else ""
                assert sub not in higher, f"{path} imports {mod}"
                assert sub not in {"kernel", "cli", "aio", "config"}, (
                    f"{path} imports {mod}"
                )


def test_the_knowledge_store_sits_at_the_projection_level() -> None:
    for path in (PACKAGE / "knowledge").rglob("*.py"):
        for mod in _imports(path):
            sub = mod.split(".")[1] if "." in mod else ""
            assert sub in {"", "events", "projections", "knowledge"}, (
                f"{path} imports {mod}"
            )


def test_projections_and_events_do_not_import_the_knowledge_store() -> None:
    for layer in ("events", "projections"):
        for path in (PACKAGE / layer).rglob("*.py"):
            for mod in _imports(path):
                assert not mod.startswith("nerve.knowledge"), f"{path} imports {mod}"


def test_importing_nerve_does_not_import_numpy() -> None:
    # The knowledge store (numpy, and OpenBLAS's threads) loads when a kernel
    # opens it, not for every program that only uses the log or the actors.
    code = "import sys, nerve, nerve.events; print('numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
