"""The fuzz corpus replayed: every committed input (seeds, and what atheris found) still
meets its target's properties. Needs no atheris: it calls the targets on each file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
INPUTS = sorted(
    (name, path) for name in TARGETS for path in (CORPUS / name).iterdir() if path.is_file()
)


def test_every_target_has_a_corpus_and_every_corpus_a_target() -> None:
    assert {path.name for path in CORPUS.iterdir() if path.is_dir()} == set(TARGETS)
    for name in TARGETS:
        assert any((CORPUS / name).iterdir()), name


@pytest.mark.parametrize(
    ("name", "path"), INPUTS, ids=[f"{name}/{path.name[:12]}" for name, path in INPUTS]
)
def test_a_corpus_input_meets_its_targets_properties(name: str, path: Path) -> None:
    TARGETS[name](path.read_bytes())
