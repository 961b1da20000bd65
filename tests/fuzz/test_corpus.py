"""Every input in the fuzz corpus, seeds and past crashes alike, replayed through its target."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import OPTIONAL_TARGETS, TARGETS

CORPUS = Path(__file__).resolve().parent / "corpus"
INPUTS = sorted(path for path in CORPUS.glob("*/*") if path.is_file())


def test_every_target_has_seeds() -> None:
    """Each fuzz target starts from real inputs kept in the repository."""
    assert {path.parent.name for path in INPUTS} >= set(TARGETS) | OPTIONAL_TARGETS


@pytest.mark.parametrize("path", INPUTS, ids=[f"{p.parent.name}/{p.name}" for p in INPUTS])
def test_corpus_input_is_handled(path: Path) -> None:
    """The input is accepted or refused as designed (a past crash stays fixed)."""
    target = TARGETS.get(path.parent.name)
    if target is None:
        assert path.parent.name in OPTIONAL_TARGETS, path
        pytest.skip(f"{path.parent.name}: drainwatch lint is not part of this tree")
    target(path.read_bytes())
