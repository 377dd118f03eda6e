"""`porter verify`: journal, compile, import, fixpoint and plugin checks."""
import json

from porter.testing import run_porter

CHECKS_PLUGIN = """
import porter
from porter.verify import Check, CheckResult

def passes(ctx):
    original = ctx.original_source("toylib/dist.py")
    patched = (ctx.site_packages / "toylib/dist.py").read_text()
    yield CheckResult("toy-parity", "dist.py", "ok" if "'nccl'" in original and "'gloo'" in patched else "fail",
                      "original says nccl, patched says gloo")

def crashes(ctx):
    raise ValueError("cannot compare")

@porter.hookimpl
def porter_register_checks(register):
    register(Check("toy.parity", "toylib", "original vs patched backend", passes))
    register(Check("toy.crash", "toylib", "a check that crashes", crashes))
"""

BREAKING_PLUGIN = """
import libcst as cst
import porter
from porter.rules import Rule, RuleDocs, RuleTransformer

class BreakImport(RuleTransformer):
    def leave_Import(self, original_node, updated_node):
        self.record(original_node, "time -> tyme")
        return cst.parse_statement("import tyme").body[0]

@porter.hookimpl
def porter_register_rules(register):
    register(Rule(id="toylib.breaks", target="toylib", files=("toylib/timer.py",), category="test",
                  summary="breaks the import", rewrite=BreakImport, docs=RuleDocs("t", "t"), after=("toylib.sync",)))
"""


def verify_json(site, env, *extra):
    r = run_porter(*extra, "verify", "toylib", "--json", "--site-packages", str(site), env=env)
    return r.returncode, json.loads(r.stdout)


def by_stage(report):
    out = {}
    for res in report["results"]:
        out.setdefault(res["stage"], {})[res["item"]] = (res["status"], res["detail"])
    return out


def test_verify_passes_every_stage_after_a_patch(toylib_site, porter_env, tmp_path):
    checks = tmp_path / "checks.py"
    checks.write_text(CHECKS_PLUGIN.replace("    register(Check(\"toy.crash\"", "    # register(Check(\"toy.crash\""))
    r = run_porter("--plugin", str(checks), "patch", "toylib", "--verify", "--site-packages", str(toylib_site), env=porter_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify toylib: passed" in r.stdout
    code, report = verify_json(toylib_site, porter_env, "--plugin", str(checks))
    stages = by_stage(report)
    assert code == 0 and report["ok"]
    assert set(stages) == {"journal", "compile", "import", "fixpoint", "toy-parity"}
    assert stages["import"] == {"toylib.dist": ("ok", ""), "toylib.timer": ("ok", "")}
    assert stages["fixpoint"]["toylib/config.json"][0] == "ok"


def test_verify_fails_on_a_crashing_check_with_its_reason(toylib_site, porter_env, tmp_path):
    checks = tmp_path / "checks.py"
    checks.write_text(CHECKS_PLUGIN)
    run_porter("patch", "toylib", "--site-packages", str(toylib_site), env=porter_env)
    code, report = verify_json(toylib_site, porter_env, "--plugin", str(checks))
    assert code == 1 and not report["ok"]
    assert by_stage(report)["toy.crash"]["-"] == ("fail", "ValueError: cannot compare")


def test_verify_fails_on_drift(toylib_site, porter_env):
    run_porter("patch", "toylib", "--site-packages", str(toylib_site), env=porter_env)
    (toylib_site / "toylib/dist.py").write_text("BACKEND = 'mpi'\n")
    code, report = verify_json(toylib_site, porter_env)
    assert code == 1
    assert by_stage(report)["journal"]["toylib/dist.py"][0] == "fail"


def test_verify_fails_when_a_patched_module_does_not_import(toylib_site, porter_env, tmp_path):
    breaking = tmp_path / "breaking.py"
    breaking.write_text(BREAKING_PLUGIN)
    r = run_porter("--plugin", str(breaking), "patch", "toylib", "--verify", "--site-packages", str(toylib_site),
                   env=porter_env)
    assert r.returncode == 1
    code, report = verify_json(toylib_site, porter_env, "--plugin", str(breaking))
    status, detail = by_stage(report)["import"]["toylib.timer"]
    assert status == "fail" and "No module named 'tyme'" in detail


def test_verify_of_an_unpatched_target_fails(toylib_site, porter_env):
    code, report = verify_json(toylib_site, porter_env)
    assert code == 1 and report["results"][0]["detail"] == "not patched: no journal"


def test_verify_notices_rules_that_are_no_longer_a_fixpoint(toylib_site, porter_env):
    run_porter("patch", "toylib", "--site-packages", str(toylib_site), env=porter_env)
    # pretend the journal said more rules ran than are installed now
    journal = toylib_site / ".porter-state/toylib/journal.json"
    data = json.loads(journal.read_text())
    data["rules"].append("toylib.gone")
    journal.write_text(json.dumps(data))
    code, report = verify_json(toylib_site, porter_env)
    assert code == 1
    assert by_stage(report)["fixpoint"]["toylib.gone"][0] == "fail"
