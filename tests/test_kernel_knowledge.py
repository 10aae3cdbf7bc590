"""The knowledge store inside the kernel: ``kernel.knowledge``."""

from __future__ import annotations

from pathlib import Path

import nerve


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "resume.py").write_text(
        "def resume_crashed_run(run):\n"
        "    '''Start a crashed run again with its journal.'''\n"
        "    return run.attempt + 1\n"
    )
    (root / "README.md").write_text("# Garden\n\nTomatoes need sun and water.\n")


async def test_the_kernel_indexes_and_searches_knowledge(tmp_path: Path) -> None:
    _tree(tmp_path / "repo")
    app = nerve.App()
    async with nerve.open_kernel(app, tmp_path / "data") as kernel:
        assert kernel.knowledge is not None
        result = await kernel.knowledge.index(tmp_path / "repo", repo="demo")
        assert sorted(result.added) == ["README.md", "src/resume.py"]
        hits = await kernel.knowledge.search("crashed run journal", k=3)
        assert hits
        assert hits[0].path == "src/resume.py"
        assert hits[0].repo == "demo"
        names = {p.name for p in kernel.statistics().projections}
        assert any("knowledge" in n for n in names)
    assert (tmp_path / "data" / "knowledge.db").exists()


async def test_the_knowledge_store_can_be_left_out(tmp_path: Path) -> None:
    async with nerve.open_kernel(nerve.App(), tmp_path / "data", knowledge=False) as k:
        assert k.knowledge is None
    assert not (tmp_path / "data" / "knowledge.db").exists()
