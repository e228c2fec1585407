"""docs/porting.md's emote_jax examples run as written: its ```python blocks that start with
``# emote_jax`` are executed in order in one namespace (their own asserts check what they show)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "porting.md"


def emote_jax_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return [b for b in blocks if b.startswith("# emote_jax")]


def test_the_porting_guides_examples_run():
    blocks = emote_jax_blocks()
    assert len(blocks) == 4  # loss, target, collector, logger
    namespace: dict = {"__name__": "porting_doc"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)  # noqa: S102 (our own documentation)


def test_every_test_the_guide_names_exists():
    """The 'Pinned by' column names tests that exist (a renamed test must update the guide)."""
    root = DOC.parents[1]
    for path, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", DOC.read_text()):
        text = (root / path).read_text()
        assert name == "" or f"def {name}(" in text, f"{path}::{name} named in docs/porting.md does not exist"
