"""The plan cache: a file whose text and rules are unchanged is planned once; anything else plans again."""
import json

import pytest
from fixture_plugin import RULES, TOYLIB

import porter.plan as planning
from porter.errors import PlanError
from porter.plan import make_plan
from porter.target import locate


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTER_PLAN_CACHE", "1")
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "plans"


@pytest.fixture
def planned_files(monkeypatch):
    """The files actually planned (not taken from the cache), in order (in this process: no planning workers)."""
    monkeypatch.setenv("PORTER_PLAN_WORKERS", "1")
    seen = []
    real = planning.rewrite_file
    monkeypatch.setattr(planning, "rewrite_file", lambda path, *a, **k: seen.append(path) or real(path, *a, **k))
    return seen


def test_a_second_plan_comes_from_the_cache_and_equals_the_first(cache, planned_files, toylib_site):
    installed = locate(TOYLIB, toylib_site)
    first = make_plan(installed, RULES)
    assert planned_files and len(list(cache.rglob("*.json"))) == len(first.files)
    planned_files.clear()
    second = make_plan(installed, RULES)
    assert planned_files == []
    assert [(f.path, f.before, f.after, f.matches) for f in second.files] == \
        [(f.path, f.before, f.after, f.matches) for f in first.files]


def test_changed_text_or_rules_plan_again(cache, planned_files, toylib_site):
    installed = locate(TOYLIB, toylib_site)
    make_plan(installed, RULES)
    planned_files.clear()
    dist = toylib_site / "toylib" / "dist.py"
    dist.write_text(dist.read_text() + "# edited\n")
    make_plan(installed, RULES)
    assert planned_files == ["toylib/dist.py"]
    planned_files.clear()
    make_plan(installed, RULES[:1])  # another rule set: another fingerprint
    assert planned_files


def test_a_broken_entry_is_planned_again_and_errors_are_never_cached(cache, planned_files, toylib_site):
    installed = locate(TOYLIB, toylib_site)
    first = make_plan(installed, RULES)
    for entry in cache.rglob("*.json"):
        entry.write_text("{not json")
    planned_files.clear()
    again = make_plan(installed, RULES)
    assert sorted(planned_files) == sorted(f.path for f in first.files)
    assert [f.after for f in again.files] == [f.after for f in first.files]
    assert all(json.loads(e.read_text())["after"] is not None for e in cache.rglob("*.json"))
    # a required rule that no longer matches is an error every time: nothing is stored for that text
    (toylib_site / "toylib" / "dist.py").write_text("BACKEND = 'gloo'\n")
    entries = sorted(cache.rglob("*.json"))
    for _ in range(2):
        with pytest.raises(PlanError, match="required rule toylib.backend matched nothing"):
            make_plan(installed, RULES)
    assert sorted(cache.rglob("*.json")) == entries  # the other files were cached already; dist.py never is


def test_off_switch(cache, planned_files, toylib_site, monkeypatch):
    monkeypatch.setenv("PORTER_PLAN_CACHE", "0")
    installed = locate(TOYLIB, toylib_site)
    make_plan(installed, RULES)
    make_plan(installed, RULES)
    assert len(planned_files) == 2 * len(set(planned_files)) and not cache.exists()


@pytest.mark.parametrize("entry", [{"after": 7, "matches": []}, {"after": "x = 1\n", "matches": [{"rule_id": 1}]},
                                   {"after": "x = 1\n", "matches": [{"rule_id": "r", "path": "p", "start_line": "9",
                                                                     "end_line": 1, "message": "m"}]}])
def test_an_entry_of_the_wrong_shape_is_planned_again(cache, planned_files, toylib_site, entry):
    """A cache entry is read as untrusted: valid JSON that is not what porter writes is never served as a plan."""
    installed = locate(TOYLIB, toylib_site)
    first = make_plan(installed, RULES)
    for path in cache.rglob("*.json"):
        path.write_text(json.dumps(entry))
    planned_files.clear()
    again = make_plan(installed, RULES)
    assert sorted(planned_files) == sorted(f.path for f in first.files)
    assert [(f.after, f.matches) for f in again.files] == [(f.after, f.matches) for f in first.files]
