"""Census: the patch transaction's state and journal, tampered with as a careless or hostile user (or a bug, or
another tool) would. Each row damages a freshly patched toylib, runs one command in this interpreter, and asserts
the exit code, one error line, and the bytes of the package and of anything outside it.

The four data-loss rows of issue 23 (a shortened journal, a journal path out of the package, a field of the wrong
type, a run folder that is not porter's) fail on the code before it: a shortened list let `revert` delete the only
copies of the unlisted files, a path like `../out/v` was written, a wrong type crashed half-way.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from census import Case, assert_refused, cli, ids

from porter.testing import tree_digest

STATE = ".porter-state/toylib"
JOURNAL = f"{STATE}/journal.json"


@pytest.fixture(scope="module")
def patched_template(tmp_path_factory, fixture_plugin_env):
    from fixture_plugin import TOYLIB_FILES

    from porter.testing import make_distribution

    root = tmp_path_factory.mktemp("census-patch")
    site = make_distribution(root / "pristine", "toylib", "1.0", TOYLIB_FILES)
    pristine = tree_digest(site / "toylib")
    patched = root / "patched"
    shutil.copytree(site, patched, symlinks=True)
    r = cli("patch", "toylib", "--site-packages", str(patched), env=fixture_plugin_env)
    assert r.returncode == 0, r.stderr
    return patched, pristine


@pytest.fixture(scope="module")
def fixture_plugin_env():
    import fixture_plugin  # tests/ is on sys.path (tests/conftest.py); `conftest` alone names whichever ran last

    return {"PORTER_PLUGINS": fixture_plugin.__file__}


@pytest.fixture
def site(patched_template, tmp_path):
    patched, _ = patched_template
    dest = tmp_path / "site-packages"
    shutil.copytree(patched, dest, symlinks=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "v").write_text("the user's own file outside site-packages\n")
    return dest


def edit_journal(change):
    def mutate(site: Path):
        path = site / JOURNAL
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return mutate


def set_field(index, name, value):
    def change(data):
        if index is None:
            data[name] = value
        else:
            data["files"][index][name] = value
    return edit_journal(change)


def drop_field(index, name):
    def change(data):
        (data if index is None else data["files"][index]).pop(name)
    return edit_journal(change)


def raw_journal(content: bytes):
    return lambda site: (site / JOURNAL).write_bytes(content)


def shorten(data):
    data["files"] = data["files"][:1]


def nest(depth):
    return raw_journal(b"[" * depth + b"]" * depth)


def symlinked_journal(site):
    (site / JOURNAL).unlink()
    (site / JOURNAL).symlink_to("/dev/zero")


def journal_folder(site):
    (site / JOURNAL).unlink()
    (site / JOURNAL).mkdir()


UNREADABLE = "unreadable journal"
# (case, damage, the error's words); each row: `status` exits 0 and says damaged, `patch` and `revert` refuse with
# exit 4 before writing, the package and the file outside it keep their bytes
JOURNAL_ROWS = [
    (Case("journal/shortened-files-list", "journal", "a journal listing 1 of 3 patched files: status damaged; revert "
          "refuses (4) naming the unlisted originals and deletes none; --force restores all three"),
     edit_journal(shorten), "also holds saved originals of"),
    (Case("journal/path-dotdot", "journal", "a path '../out/v' (outside site-packages): refused before any write"),
     set_field(0, "path", "../out/v"), UNREADABLE),
    (Case("journal/path-dotdot-inside", "journal", "a path 'toylib/../../out/v': refused"),
     set_field(0, "path", "toylib/../../out/v"), UNREADABLE),
    (Case("journal/path-absolute", "journal", "an absolute path: refused"),
     set_field(0, "path", "/etc/hostname"), UNREADABLE),
    (Case("journal/path-other-package", "journal", "a path in another package of site-packages: refused"),
     set_field(0, "path", "otherpkg/x.py"), UNREADABLE),
    (Case("journal/path-empty", "journal", "an empty path: refused"), set_field(0, "path", ""), UNREADABLE),
    (Case("journal/path-dot-part", "journal", "a path with a '.' part: refused"),
     set_field(0, "path", "toylib/./dist.py"), UNREADABLE),
    (Case("journal/path-backslash", "journal", "a Windows-style path: refused"),
     set_field(0, "path", "toylib\\..\\..\\out\\v"), UNREADABLE),
    (Case("journal/path-nul", "journal", "a path holding NUL: refused"),
     set_field(0, "path", "toylib/dist.py\x00x"), UNREADABLE),
    (Case("journal/path-number", "journal", "path a number: refused, not a traceback half-way"),
     set_field(0, "path", 5), UNREADABLE),
    (Case("journal/path-duplicate", "journal", "one path listed twice: refused"),
     edit_journal(lambda d: d["files"].__setitem__(1, dict(d["files"][0]))), "listed twice"),
    (Case("journal/mode-string", "journal", "mode a string: refused before any write, not left interrupted"),
     set_field(0, "mode", "644"), UNREADABLE),
    (Case("journal/mode-out-of-range", "journal", "mode beyond 0o7777: refused"),
     set_field(0, "mode", 1 << 20), UNREADABLE),
    (Case("journal/mode-negative", "journal", "a negative mode: refused"), set_field(0, "mode", -1), UNREADABLE),
    (Case("journal/mode-bool", "journal", "mode true (a bool, which Python counts as an int): refused"),
     set_field(0, "mode", True), UNREADABLE),
    (Case("journal/sha-not-hex", "journal", "original_sha256 not a hex digest: refused"),
     set_field(0, "original_sha256", "zz"), UNREADABLE),
    (Case("journal/sha-null", "journal", "patched_sha256 null: refused"),
     set_field(1, "patched_sha256", None), UNREADABLE),
    (Case("journal/rules-not-list", "journal", "an entry's rules a string: refused"),
     set_field(0, "rules", "toylib.backend"), UNREADABLE),
    (Case("journal/rules-holds-number", "journal", "the journal's rules list holds a number: refused"),
     set_field(None, "rules", [1, 2]), UNREADABLE),
    (Case("journal/entry-missing-field", "journal", "an entry without original_sha256: refused"),
     drop_field(0, "original_sha256"), UNREADABLE),
    (Case("journal/entry-unknown-field", "journal", "an entry with a field porter never writes: refused"),
     set_field(0, "exec", "rm -rf /"), UNREADABLE),
    (Case("journal/entry-not-object", "journal", "an entry that is a list: refused"),
     edit_journal(lambda d: d["files"].__setitem__(0, ["toylib/dist.py"])), UNREADABLE),
    (Case("journal/files-not-list", "journal", "files an object: refused"),
     set_field(None, "files", {"toylib/dist.py": 1}), UNREADABLE),
    (Case("journal/status-unknown", "journal", "status 'done': refused"), set_field(None, "status", "done"),
     UNREADABLE),
    (Case("journal/format-string", "journal", "format a string: refused"), set_field(None, "format", "1"),
     UNREADABLE),
    (Case("journal/format-future", "journal", "format 2 (a later porter): refused, naming the format"),
     set_field(None, "format", 2), "journal format 2 is not 1"),
    (Case("journal/target-number", "journal", "target a number: refused"), set_field(None, "target", 7), UNREADABLE),
    (Case("journal/missing-version", "journal", "no version field: refused"), drop_field(None, "version"),
     UNREADABLE),
    (Case("journal/symlink-field-empty", "journal", "an empty symlink text: refused"),
     set_field(0, "symlink", ""), UNREADABLE),
    (Case("journal/top-level-list", "journal", "a journal that is a JSON list: refused"),
     raw_journal(b"[1, 2, 3]"), UNREADABLE),
    (Case("journal/not-json", "journal", "garbage bytes: refused"), raw_journal(b"\x00\x01garbage{"), UNREADABLE),
    (Case("journal/not-utf8", "journal", "Latin-1 bytes: refused"), raw_journal(b'{"target": "\xe9"}'), UNREADABLE),
    (Case("journal/truncated", "journal", "a journal cut half-way: refused"),
     lambda site: (site / JOURNAL).write_bytes((site / JOURNAL).read_bytes()[:40]), UNREADABLE),
    (Case("journal/empty", "journal", "a 0-byte journal: refused"), raw_journal(b""), UNREADABLE),
    (Case("journal/deep-nesting", "journal", "100,000 nested lists: refused, not a RecursionError"),
     nest(100_000), UNREADABLE),
    (Case("journal/nan", "journal", "mode NaN (a literal Python's json accepts): refused"),
     lambda site: (site / JOURNAL).write_text((site / JOURNAL).read_text().replace('"mode": 420', '"mode": NaN', 1)),
     UNREADABLE),
    (Case("journal/symlink-to-device", "journal", "the journal a symlink to /dev/zero: refused without reading"),
     symlinked_journal, UNREADABLE),
    (Case("journal/a-folder", "journal", "the journal a folder: refused"), journal_folder, UNREADABLE),
]


@pytest.mark.parametrize("case,damage,words", JOURNAL_ROWS, ids=ids(JOURNAL_ROWS))
def test_a_damaged_journal_is_named_and_nothing_is_written(case, damage, words, site, fixture_plugin_env):
    damage(site)
    package, outside = tree_digest(site / "toylib"), (site.parent / "out" / "v").read_bytes()
    state = tree_digest(site / STATE) if (site / STATE).is_dir() else None
    where = ("--site-packages", str(site))

    s = cli("status", "toylib", "--json", *where, env=fixture_plugin_env)
    assert s.returncode == 0 and "Traceback" not in s.stderr, s.stderr
    assert json.loads(s.stdout)[0]["state"] == "damaged"
    assert_refused(cli("revert", "toylib", *where, env=fixture_plugin_env), 4, words)
    assert_refused(cli("patch", "toylib", *where, env=fixture_plugin_env), 4)
    assert tree_digest(site / "toylib") == package
    assert (site.parent / "out" / "v").read_bytes() == outside
    assert (tree_digest(site / STATE) if (site / STATE).is_dir() else None) == state


@pytest.mark.parametrize("case,damage,words", JOURNAL_ROWS, ids=ids(JOURNAL_ROWS))
def test_revert_force_restores_every_saved_original_and_nothing_outside(case, damage, words, site, patched_template,
                                                                         fixture_plugin_env):
    _, pristine = patched_template
    damage(site)
    outside = (site.parent / "out" / "v").read_bytes()
    r = cli("revert", "toylib", "--force", "--site-packages", str(site), env=fixture_plugin_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(site / "toylib") == pristine
    assert (site.parent / "out" / "v").read_bytes() == outside
    assert not (site / ".porter-state").exists()


def leftover(site):
    (site / "toylib" / ".timer.py.k2j4x9_a.porter-tmp").write_text("half a file")


def original_in_other_package(site):
    target = site / STATE / "originals" / "otherpkg"
    target.mkdir(parents=True)
    (target / "x.py").write_text("x = 1\n")


def shortened_and_deleted_journal_original(site):
    (site / JOURNAL).unlink()
    original_in_other_package(site)


# (case, damage, command, exit code, words): other damage to the state folder
STATE_ROWS = [
    (Case("state/leftover-temporary-status", "state", "a killed write's temporary file in the package: status says "
          "interrupted and names it (it said clean)"), leftover, "status", 0, "temporary file of an interrupted write"),
    (Case("state/leftover-temporary-revert", "state", "revert removes a killed write's temporary file and restores"),
     leftover, "revert", 0, "left by an interrupted write"),
    (Case("state/original-outside-package", "state", "a saved original of another package in the state folder, no "
          "journal: revert refuses to write it (4)"), shortened_and_deleted_journal_original, "revert", 4,
     "outside the package"),
]


@pytest.mark.parametrize("case,damage,command,code,words", STATE_ROWS, ids=ids(STATE_ROWS))
def test_state_damage(case, damage, command, code, words, site, fixture_plugin_env):
    damage(site)
    r = cli(command, "toylib", "--site-packages", str(site), env=fixture_plugin_env)
    if code:
        assert_refused(r, code, words)
        assert not (site / "otherpkg").exists()
    else:
        assert r.returncode == 0 and words in r.stdout + r.stderr, r.stdout + r.stderr
    if command == "revert" and code == 0:
        assert not list((site / "toylib").glob("*.porter-tmp"))
        assert cli("status", "toylib", "--json", "--site-packages", str(site),
                   env=fixture_plugin_env).stdout.count('"clean"') == 1


def test_a_symlinked_file_is_a_symlink_again_after_patch_and_revert(tmp_path, fixture_plugin_env):
    """The package's timer.py is a link to a file outside the package: patch replaces the link (the file it
    points at keeps its bytes), revert makes the link again."""
    from fixture_plugin import TOYLIB_FILES

    from porter.testing import make_distribution

    site = make_distribution(tmp_path / "site", "toylib", "1.0", TOYLIB_FILES)
    elsewhere = tmp_path / "elsewhere.py"
    link = site / "toylib" / "timer.py"
    shutil.move(link, elsewhere)
    os.symlink(elsewhere, link)
    before = elsewhere.read_bytes()
    where = ("--site-packages", str(site))
    assert cli("patch", "toylib", *where, env=fixture_plugin_env).returncode == 0
    assert not link.is_symlink() and link.read_bytes() != before and elsewhere.read_bytes() == before
    r = cli("revert", "toylib", *where, env=fixture_plugin_env)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(elsewhere) and elsewhere.read_bytes() == before


def originals_linked_to_site_packages(site):
    """The journal gone and `originals/` a link to site-packages itself: every installed file would look like a
    saved original equal to itself, and clearing them would delete site-packages."""
    (site / JOURNAL).unlink()
    shutil.rmtree(site / STATE / "originals")
    (site / STATE / "originals").symlink_to("../..")


def state_folder_linked(site):
    shutil.rmtree(site / ".porter-state")
    (site.parent / "elsewhere").mkdir()
    (site / ".porter-state").symlink_to(site.parent / "elsewhere")


def originals_subfolder_linked_into_the_package(site):
    """No journal, no originals, and originals/toylib a link to the package: a patch would save its originals
    through it, over the installed files."""
    shutil.copytree(site / STATE / "originals" / "toylib", site / "toylib", dirs_exist_ok=True)  # unpatched again
    shutil.rmtree(site / STATE)
    (site / STATE / "originals").mkdir(parents=True)
    (site / STATE / "originals" / "toylib").symlink_to(site / "toylib")


def journal_path_through_a_linked_folder(site):
    (site / "toylib" / "out-link").symlink_to(site.parent / "out")
    set_field(0, "path", "toylib/out-link/v")(site)


# (case, damage, the commands and their exit codes, words): nothing through a link, nothing deleted
LINK_ROWS = [
    (Case("state/originals-linked-to-site-packages", "state", "originals/ a symlink to site-packages, no journal: "
          "patch, revert and revert --force refuse (4) and delete nothing (they would have deleted site-packages)"),
     originals_linked_to_site_packages, ("patch", "revert", "revert --force"), "is a symbolic link"),
    (Case("state/state-folder-linked", "state", ".porter-state a symlink to another folder: refused (4)"),
     state_folder_linked, ("patch", "revert"), "is a symbolic link"),
    (Case("state/originals-subfolder-linked-into-package", "state", "originals/toylib a symlink to the package "
          "itself: patch refuses (4) before saving an original through it"),
     originals_subfolder_linked_into_the_package, ("patch",), "is a symbolic link"),
    (Case("journal/path-through-linked-folder", "journal", "a journal path under a package folder that is a symlink "
          "out of the package: refused (4), the file it leads to untouched"),
     journal_path_through_a_linked_folder, ("revert", "patch"), "outside the package"),
]


@pytest.mark.parametrize("case,damage,commands,words", LINK_ROWS, ids=ids(LINK_ROWS))
def test_nothing_is_read_written_or_deleted_through_a_planted_link(case, damage, commands, words, site,
                                                                   fixture_plugin_env):
    damage(site)
    before = tree_digest(site.parent)
    for command in commands:
        assert_refused(cli(*command.split(), "toylib", "--site-packages", str(site), env=fixture_plugin_env), 4, words)
    assert tree_digest(site.parent) == before
    s = cli("status", "toylib", "--json", "--site-packages", str(site), env=fixture_plugin_env)
    assert s.returncode == 0 and json.loads(s.stdout)[0]["state"] == "damaged"


def test_a_journal_symlink_to_a_device_cannot_hang_revert(site, patched_template, fixture_plugin_env):
    """A journal entry saying the file was a link to /dev/zero: revert makes the link, finds it does not lead to the
    original bytes (a device is never read), and writes the bytes instead."""
    _, pristine = patched_template
    set_field(0, "symlink", "/dev/zero")(site)
    r = cli("revert", "toylib", "--site-packages", str(site), env=fixture_plugin_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(site / "toylib") == pristine
    assert not any(p.is_symlink() for p in (site / "toylib").iterdir())


CASES = [row[0] for row in JOURNAL_ROWS + STATE_ROWS + LINK_ROWS] + [
    Case("journal/symlink-text-a-device", "journal", "a journal entry whose symlink text is /dev/zero: revert does not "
         "hang reading it, restores the bytes"),
    Case("state/symlinked-file", "state", "a package file that is a symlink out of the package: patch replaces the "
         "link and leaves its target alone; revert makes the link again (it became a regular file)")]
