"""The census as a whole: case ids unique, at least 150 of them, every kind of fault represented, and
docs/reliability.md listing exactly these cases (regenerate it with `python tests/reliability/census.py`)."""
from collections import Counter
from pathlib import Path

from census import DOC, KINDS, all_cases, render

CASES = []  # this module only counts the others


def test_the_census_has_150_distinct_cases_of_every_kind():
    cases = all_cases()
    twice = [i for i, n in Counter(c.id for c in cases).items() if n > 1]
    assert not twice, twice
    assert len(cases) >= 150, len(cases)
    assert set(KINDS) == {c.kind for c in cases}, set(KINDS) - {c.kind for c in cases}


def test_docs_reliability_lists_exactly_the_census():
    doc = (Path(__file__).parent.parent.parent / DOC).read_text()
    assert render(all_cases()) in doc, "docs/reliability.md is stale: run .venv/bin/python tests/reliability/census.py"


def test_the_readme_states_the_census_count():
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    assert f"a census of {len(all_cases())} bad inputs" in readme, "README.md's census count is stale"
