"""The in-memory port's plan cache is keyed by everything that shapes the plan."""
from __future__ import annotations

from fixture_plugin import TOYLIB

from porter import memory
from porter.target import locate


def test_the_key_changes_with_the_installed_files_the_plugins_and_porter_itself(toylib_site, monkeypatch):
    installed = locate(TOYLIB, toylib_site)
    base = memory._source_key(installed, "plugins-1")
    assert memory._source_key(installed, "plugins-1") == base
    assert memory._source_key(installed, "plugins-2") != base
    monkeypatch.setattr(memory, "engine_digest", lambda: "an edited porter checkout")
    assert memory._source_key(installed, "plugins-1") != base  # a changed engine never reuses an old plan
    monkeypatch.undo()
    (toylib_site / "toylib" / "timer.py").write_text("# changed\n")
    assert memory._source_key(installed, "plugins-1") != base
