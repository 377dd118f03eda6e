"""The in-memory port's cache (`porter run` workers and `porter exec` share it) is keyed by everything that shapes
the plan, and read as untrusted."""
from __future__ import annotations

from fixture_plugin import TOYLIB

from porter import memory
from porter.target import locate


def test_the_key_changes_with_the_installed_files_the_plugins_and_porter_itself(toylib_site, monkeypatch):
    installed = locate(TOYLIB, toylib_site)
    base = memory._key(installed, "plugins-1", None)
    assert memory._key(installed, "plugins-1", None) == base
    assert memory._key(installed, "plugins-2", None) != base
    monkeypatch.setattr(memory, "engine_digest", lambda: "an edited porter checkout")
    assert memory._key(installed, "plugins-1", None) != base  # a changed engine never reuses an old plan
    monkeypatch.undo()
    (toylib_site / "toylib" / "timer.py").write_text("# changed\n")
    assert memory._key(installed, "plugins-1", None) != base


def test_a_cached_port_of_the_wrong_shape_is_planned_again(toylib_site, tmp_path, monkeypatch):
    """An entry naming a file outside the target, or not file -> source at all, is never served: planned again."""
    from fixture_plugin import RULES

    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    installed = locate(TOYLIB, toylib_site)
    first = memory.prepare(installed, lambda: RULES, "plugins-1")
    assert not first.cached and first.sources
    assert memory.prepare(installed, lambda: RULES, "plugins-1").cached
    entries = list((tmp_path / "cache").rglob("toylib-port-*.json"))
    assert len(entries) == 1
    for foreign in ('{"sources": {"/etc/elsewhere.py": "print(1)"}}', '{"sources": ["x"]}', "[]", "{"):
        entries[0].write_text(foreign)
        again = memory.prepare(installed, lambda: RULES, "plugins-1")
        assert not again.cached and again.sources == first.sources and again.files == first.files
