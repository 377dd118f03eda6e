"""Planning on cut-down files (porter.skeleton): what is cut, what is kept, that the cut file expands back to the
file byte for byte, and that a plan on it is the plan on the whole file, on SAT as installed and as released."""
import textwrap
import zipfile

import libcst as cst
import pytest
from fixture_plugin import DOCS

import porter.rewrite as engine
from porter import plugins
from porter.errors import PlanError
from porter.rewrite import rewrite_file
from porter.rules import Rule, RuleTransformer
from porter.skeleton import Lost, cut
from porter.target import locate


def rule(id, rewrite, **kw):
    return Rule(id=id, target="pkg", files=("pkg/mod.py",), category="test", summary=id, rewrite=rewrite, docs=DOCS,
                **kw)


class Synchronize(RuleTransformer):
    """torch.cuda.synchronize() -> torch.npu.synchronize(), through the file's imports."""

    def leave_Call(self, original_node, updated_node):
        if self.qualified_name(original_node.func) == "torch.cuda.synchronize":
            self.record(original_node, "synchronize")
            return updated_node.with_changes(func=cst.parse_expression("torch.npu.synchronize"))
        return updated_node


SYNC = rule("sync", Synchronize, triggers=("synchronize",))


def plan_both(text, rules, monkeypatch):
    """The plan on the cut file and the reference: the whole file, one rule at a time."""
    cut_plan = rewrite_file("pkg/mod.py", text, rules, enforce_required=False)
    return cut_plan, engine._one_at_a_time("pkg/mod.py", text, list(rules), enforce_required=False)


SOURCE = textwrap.dedent('''\
    """Module docstring."""
    import os
    import torch


    def untouched(a):
        # a comment before the first statement
        x = a + 1; y = x * 2
        return y


    @decorator
    def timed(fn):
        if os.environ.get("X"):
            pass
        elif os.environ.get("Y"):
            torch.cuda.synchronize()
        else:
            z = 1
        try:
            w = 2
        except ValueError as exc:
            raise
        finally:
            v = 3
        if z: q = 4
        return fn


    class Timer:
        attribute = 1

        def start(self):
            torch.cuda.synchronize()
            self.t = 1

        def stop(self):
            return 2
    ''')


def test_statements_without_a_trigger_become_placeholders_and_expand_back_byte_for_byte():
    skeleton = cut(SOURCE, ["synchronize"])
    assert skeleton is not None
    text = skeleton.text
    assert "def untouched" not in text and "def stop" not in text and "attribute = 1" not in text
    # kept: the head, the statements holding the trigger and every header around them (elif chains included)
    for kept in ('"""Module docstring."""', "import os", "@decorator", "elif os.environ.get(\"Y\"):",
                 "torch.cuda.synchronize()", "class Timer:", "def start(self):"):
        assert kept in text, kept
    assert "self.t = 1" not in text and "w = 2" not in text and "v = 3" not in text
    assert "if z: q = 4" not in text  # a one-line compound statement is one statement: cut whole
    assert text.count("porter-skeleton:") == len(skeleton.runs)
    compile(text, "<skeleton>", "exec")
    full, lines = skeleton.expand(text)
    assert full == SOURCE
    assert len(lines) == len(text.splitlines())
    assert [SOURCE.splitlines()[first - 1] for first, _ in lines if first == _][:3] == SOURCE.splitlines()[:3]


def test_a_function_reading_rule_keeps_every_function_holding_its_trigger_whole():
    skeleton = cut(SOURCE, [], ["synchronize"])
    assert "self.t = 1" in skeleton.text and "w = 2" in skeleton.text  # start() and timed() whole
    assert "def stop" not in skeleton.text and "def untouched" not in skeleton.text  # a class is opened, not kept


def test_an_import_alias_of_a_trigger_is_a_trigger():
    source = "from torch.cuda import synchronize as wait\n\n\ndef f():\n    wait()\n\n\ndef g():\n    return 1\n"
    skeleton = cut(source, ["synchronize"])
    assert "    wait()" in skeleton.text and "return 1" not in skeleton.text


@pytest.mark.parametrize("source", ["x = 1\r\ny = 2\r\n", "x = 1\n\x0cy = 2\n", "def f(:\n"])
def test_text_the_cut_does_not_handle_is_planned_whole(source):
    assert cut(source, ["nothing"]) is None


def test_names_resolve_as_in_the_whole_file_not_the_cut_one(monkeypatch):
    # `torch` is a local in f: the statement binding it is cut, but the call must still not read as torch.cuda
    source = "import torch\n\n\ndef f():\n    torch = make()\n    torch.cuda.synchronize()\n\n\n" \
             "def g():\n    torch.cuda.synchronize()\n"
    assert "torch = make()" not in cut(source, ["synchronize"]).text
    cut_plan, whole_plan = plan_both(source, [SYNC], monkeypatch)
    assert [m.start_line for m in cut_plan.matches] == [10]
    assert (cut_plan.after, cut_plan.matches) == (whole_plan.after, whole_plan.matches)


def test_matches_report_the_installed_lines_and_columns(monkeypatch):
    cut_plan, whole_plan = plan_both(SOURCE, [SYNC], monkeypatch)
    assert [m.start_line for m in cut_plan.matches] == [17, 34]
    assert cut_plan.matches == whole_plan.matches and cut_plan.after == whole_plan.after
    assert cut_plan.before == SOURCE


class EmptyBodies(RuleTransformer):
    """Replaces the body of every function whose name holds 'timed' (and so drops the placeholders in it)."""

    def leave_FunctionDef(self, original_node, updated_node):
        if "timed" not in updated_node.name.value:
            return updated_node
        self.record(original_node, "emptied")
        return updated_node.with_changes(body=cst.IndentedBlock([cst.SimpleStatementLine([cst.Pass()])]))


def test_a_rewrite_that_loses_a_placeholder_is_planned_on_the_whole_file(monkeypatch):
    skeleton = cut(SOURCE, ["timed"])
    with pytest.raises(Lost):
        skeleton.expand(skeleton.text.replace("    pass  # porter-skeleton:1\n", ""))
    with pytest.raises(Lost):
        skeleton.expand(skeleton.text.replace("pass  # porter-skeleton:1", "pass  # porter-skeleton:2", 1))
    emptied = rule("empty", EmptyBodies, triggers=("timed",))
    cut_plan, whole_plan = plan_both(SOURCE, [emptied], monkeypatch)
    assert "if os.environ" not in cut_plan.after
    assert (cut_plan.after, cut_plan.matches) == (whole_plan.after, whole_plan.matches)


def test_errors_name_the_installed_lines(monkeypatch):
    clash = rule("clash", Synchronize, triggers=("synchronize",))
    with pytest.raises(PlanError, match=r"pkg/mod\.py:17: rules clash and sync both rewrite the same code"):
        rewrite_file("pkg/mod.py", SOURCE, [SYNC, clash])
    with pytest.raises(PlanError, match="required rule sync matched nothing"):
        rewrite_file("pkg/mod.py", "import torch\n\n\ndef f():\n    synchronize = 1\n", [SYNC])


def _sat_rules_by_file(version):
    registry = plugins.load()
    by_file: dict[str, list[Rule]] = {}
    for each in registry.rules_for("sat"):
        if each.applies_to(version):
            for rel in each.files_for(version):
                by_file.setdefault(rel, []).append(each)
    return by_file


def _assert_same_plans(version, read, monkeypatch):
    by_file = _sat_rules_by_file(version)
    assert by_file, f"no rule applies to SAT {version}"
    cut_files = 0
    for rel, rules in sorted(by_file.items()):
        text = read(rel)
        results = []
        for plan in (rewrite_file, engine._one_at_a_time):  # the planner's path, and the reference
            try:
                planned = plan(rel, text, list(rules))
                # the fallback gives the same plan, so it would hide a broken path: SAT's Python files never need it
                assert not (plan is rewrite_file and rel.endswith(".py") and planned.by_reference), \
                    f"SAT {version} {rel} was planned by the fallback"
                # lines, not columns: the reference reports a later rule's columns in the text it saw, where an
                # earlier rule may have changed the line; the planner's come from the original tree
                results.append((planned.after, [(m.rule_id, m.start_line, m.end_line, m.message)
                                                for m in planned.matches]))
            except PlanError as exc:
                results.append(("error", str(exc)))
        assert results[0] == results[1], f"SAT {version} {rel}: the cut file planned differently from the reference"
        if rel.endswith(".py"):
            skeleton = cut(text, [w for r in rules if r.reads == "statement" for w in r.triggers],
                           [w for r in rules if r.reads == "function" for w in r.triggers])
            cut_files += skeleton is not None and len(skeleton.text) < len(text) // 2
    assert cut_files >= len(by_file) // 2, "the cut should halve most of SAT's files"


def test_the_installed_sat_plans_the_same_cut_and_whole(monkeypatch):
    installed = locate(plugins.load().target("sat"))
    _assert_same_plans(installed.version, lambda rel: installed.path(rel).read_text(), monkeypatch)


@pytest.mark.parametrize("version", ["0.3.6", "0.4.6", "0.4.11"])
def test_released_sat_plans_the_same_cut_and_whole(version, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "releases"))
    import matrix

    with zipfile.ZipFile(matrix.wheel(version)) as wheel:
        _assert_same_plans(version, lambda rel: wheel.read(rel).decode(), monkeypatch)


def test_a_function_reading_rule_sees_the_whole_body_around_a_plain_statement(monkeypatch):
    # the list is assigned one statement before the call, at module level and in a class body
    from porter_sat.rules.device import TypedTensorFromList

    typed = rule("typed", TypedTensorFromList, triggers=("LongTensor",), reads="function")
    source = ("import torch\n\nsizes = [1, 2]\nkeys = torch.cuda.LongTensor(sizes)\n\n\nclass A:\n    n = [3]\n"
              "    t = torch.cuda.LongTensor(n)\n\n\ndef f():\n    m = [4]\n    return torch.cuda.LongTensor(m)\n\n\n"
              "def g():\n    return 1\n")
    cut_plan, whole_plan = plan_both(source, [typed], monkeypatch)
    assert len(whole_plan.matches) == 3
    assert (cut_plan.after, cut_plan.matches) == (whole_plan.after, whole_plan.matches)
    inside = "import torch\n\n\ndef f():\n    m = [4]\n    return torch.cuda.LongTensor(m)\n\n\ndef g():\n    return 1\n"
    assert "return 1" not in cut(inside, [], ["LongTensor"]).text  # in a function: only the function stays


def test_a_match_ending_on_the_files_last_cut_statement_keeps_its_end(monkeypatch):
    from porter_sat.rules.device import LocalRankCheck

    check = rule("rank", LocalRankCheck, triggers=("local_rank",))
    source = "def f(args):\n    if args.local_rank != args.device and x:\n        a = 1\n        b = 2\n\n\n# end\n"
    cut_plan, whole_plan = plan_both(source, [check], monkeypatch)
    assert cut_plan.matches == whole_plan.matches and cut_plan.matches[0].end_line == 4


class TripsOnPass(RuleTransformer):
    def leave_Pass(self, original_node, updated_node):
        raise RuntimeError("this rule never expected a pass statement")

    def leave_Name(self, original_node, updated_node):
        if updated_node.value == "old":
            self.record(original_node, "old -> new")
            return updated_node.with_changes(value="new")
        return updated_node


def test_a_rule_that_fails_on_the_cut_file_is_planned_on_the_whole_file():
    source = "x = old\n\n\ndef f():\n    return 1\n"
    assert "porter-skeleton" in cut(source, ["old"]).text
    planned = rewrite_file("pkg/mod.py", source, [rule("trips", TripsOnPass, triggers=("old",))])
    assert planned.after == source.replace("old", "new")


def test_triggers_are_names():
    with pytest.raises(ValueError, match="triggers are single names"):
        rule("dotted", Synchronize, triggers=("torch.load",))
    assert rule("listed", Synchronize, triggers=["load"]).triggers == ("load",)


def test_files_a_rule_reads_with_other_metadata_are_planned_whole():
    from libcst.metadata import ParentNodeProvider

    from porter.rewrite import plan_cut

    class WithParents(Synchronize):
        METADATA_DEPENDENCIES = (ParentNodeProvider,)

    assert plan_cut("pkg/mod.py", SOURCE, [rule("parents", WithParents, triggers=("synchronize",))]) is None
    assert plan_cut("pkg/mod.py", SOURCE, [SYNC]) is not None
