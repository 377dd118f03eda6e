"""The command line as a user meets it: help, exit codes, plain output when piped."""
import pytest

from porter.testing import run_porter

COMMANDS = ["patch", "status", "revert", "verify", "rules", "plugins"]


def test_main_help_documents_exit_codes_and_examples():
    r = run_porter("--help")
    assert r.returncode == 0
    for text in ("exit codes:", "4  the installed files are in a state", "141  the reader of the output went away",
                 "porter patch sat --verify", *COMMANDS):
        assert text in r.stdout


def test_no_command_prints_help():
    r = run_porter()
    assert r.returncode == 0 and "usage: porter" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    r = run_porter(command, "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and f"porter {command}" in r.stdout


def test_unknown_target_is_a_clear_error():
    r = run_porter("patch", "nosuch")
    assert r.returncode == 6
    assert r.stderr.startswith("error: unknown target 'nosuch' (known: sat)")
    assert "Traceback" not in r.stderr


def test_missing_site_packages_dir():
    r = run_porter("status", "sat", "--site-packages", "/nonexistent/dir")
    assert r.returncode == 6 and "/nonexistent/dir: no such directory" in r.stderr


def test_piped_output_has_no_colour(toylib_site, porter_env):
    r = run_porter("patch", "toylib", "--dry-run", "--site-packages", str(toylib_site), env=porter_env)
    assert r.returncode == 0 and "\033[" not in r.stdout + r.stderr


def test_rules_lists_docs(porter_env):
    r = run_porter("rules", "toylib", env=porter_env)
    assert r.returncode == 0
    assert r.stdout.count("why:") == 3 and "3 rules for toylib" in r.stdout


def test_docs_rule_catalogue_is_current():
    from pathlib import Path

    page = Path(__file__).parents[1] / "docs" / "sat-rules.md"
    r = run_porter("rules", "sat", "--markdown")
    assert r.returncode == 0
    assert page.read_text() == r.stdout, "regenerate: porter rules sat --markdown > docs/sat-rules.md"


@pytest.mark.parametrize("command", [["status"], ["--help"], ["plugins"], ["rules", "sat"], ["revert"],
                                     ["patch", "sat", "--dry-run"]])
def test_everyday_commands_import_no_torch_deepspeed_or_sat(command):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "porter.cli", *command], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "porter.plugins" in imported and "porter.target" in imported  # the check sees the imports
    assert not imported & {"torch", "deepspeed", "sat"}
    if command[0] in ("status", "--help", "revert"):  # no rule is needed: the rules' libcst is not loaded either
        assert "libcst" not in imported
    else:
        assert "libcst" in imported


def test_commands_that_exit_without_teardown_still_write_all_their_output(tmp_path, capsys):
    # `porter rules` and `status` end in os._exit (Command.quick_exit): buffered output must still reach a pipe
    from porter.cli import main

    assert main(["rules", "sat"]) == 0
    in_process = capsys.readouterr().out
    piped = run_porter("rules", "sat")
    assert piped.returncode == 0 and piped.stdout == in_process and len(piped.stdout) > 10_000
    report = tmp_path / "plan.json"
    r = run_porter("patch", "sat", "--dry-run", "--report", str(report))
    assert r.returncode == 0 and report.stat().st_size > 1000 and "would change" in r.stdout + r.stderr
    assert run_porter("status", "nosuch").returncode == 6


def test_a_reader_that_goes_away_ends_porter_quietly_with_141():
    # `porter rules sat | head -1`: the first line reaches the reader, then porter stops as a writer SIGPIPE
    # ends (141), without an "error:" line about the pipe
    import fcntl
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: the table (over 10 kB) cannot all fit
    porter = subprocess.Popen([sys.executable, "-m", "porter.cli", "rules", "sat"], stdout=write_end,
                              stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = reader.readline()
    stderr = porter.stderr.read()  # the reader has left, most of the table unread
    porter.stderr.close()
    assert porter.wait(timeout=120) == 141
    assert first.startswith(b"sat.") and stderr == b""


def test_the_readme_lists_the_exit_codes_porter_has():
    from pathlib import Path

    from porter.errors import Exit, exit_code_markdown

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- exit-codes:start -->\n", 1)[1].split("<!-- exit-codes:end -->", 1)[0]
    assert block == exit_code_markdown(), "regenerate the README's block from porter.errors.exit_code_markdown()"
    assert all(f"  {int(code)}  " in run_porter("--help").stdout for code in Exit)
