"""Issue 23's data-loss cases, each as a user meets it through the `porter` executable (a fresh interpreter):
a shortened journal, a journal path out of site-packages, a journal field of the wrong type, and a run folder
porter did not make. Before the fix, each lost a file or wrote outside the package: these tests failed on it."""
import json

from porter.testing import run_porter, tree_digest


def porter(site, *args, env):
    return run_porter(*args, env=env, site_packages=site)


def patched(site, env):
    pristine = tree_digest(site / "toylib")
    assert porter(site, "patch", "toylib", env=env).returncode == 0
    return pristine, site / ".porter-state" / "toylib"


def edit(state, change):
    path = state / "journal.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_shortened_journal_never_takes_the_unlisted_originals_with_it(toylib_site, porter_env):
    pristine, state = patched(toylib_site, porter_env)
    edit(state, lambda d: d.__setitem__("files", d["files"][:1]))
    unlisted = sorted(p.name for p in (state / "originals" / "toylib").iterdir())[1:]

    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "also holds saved originals of" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in (state / "originals" / "toylib").iterdir())[1:] == unlisted  # the only copies
    status = json.loads(porter(toylib_site, "status", "toylib", "--json", env=porter_env).stdout)[0]
    assert status["state"] == "damaged"  # not "clean" with two files still patched

    r = porter(toylib_site, "revert", "toylib", "--force", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == pristine
    assert not state.exists()


def test_a_journal_path_out_of_the_package_is_never_written(toylib_site, porter_env):
    _, state = patched(toylib_site, porter_env)
    victim = toylib_site.parent / "out" / "v"
    victim.parent.mkdir()
    victim.write_text("the user's file\n")
    edit(state, lambda d: d["files"][0].__setitem__("path", "../out/v"))
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "'../out/v': not a plain relative path" in r.stderr and "Traceback" not in r.stderr
    assert victim.read_text() == "the user's file\n"
    r = porter(toylib_site, "revert", "toylib", "--force", env=porter_env)
    assert victim.read_text() == "the user's file\n"
    assert r.returncode == 0 and "is unreadable: restoring from the saved originals" in r.stderr  # --force restored from the originals on disk


def test_a_journal_field_of_the_wrong_type_is_refused_before_any_write(toylib_site, porter_env):
    _, state = patched(toylib_site, porter_env)
    edit(state, lambda d: d["files"][1].__setitem__("mode", "644"))
    before = tree_digest(toylib_site)
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "journal.files[1].mode is str" in r.stderr and "Traceback" not in r.stderr
    assert tree_digest(toylib_site) == before  # not restored half-way, not left "interrupted"
    assert json.loads((state / "journal.json").read_text())["status"] == "applied"
