"""The rule engine: ordering, conflicts, required rules, fixpoints, data-file rules."""
import pytest
from fixture_plugin import DOCS, RULES, ReplaceText, rename_call, replace_string

from porter.errors import PlanError
from porter.rewrite import apply_rule, order_rules, rewrite_file
from porter.rules import Rule, RuleTransformer
from porter.testing import assert_rewrites, assert_untouched


def rule(id, rewrite, files=("pkg/mod.py",), **kw):
    return Rule(id=id, target="pkg", files=files, category="test", summary=id, rewrite=rewrite, docs=DOCS, **kw)


SOURCE = "BACKEND = 'nccl'\nOTHER = 'x'\n"


def test_rules_run_in_memory_and_report_lines():
    out = rewrite_file("pkg/mod.py", SOURCE, [rule("a", replace_string("nccl", "gloo"))])
    assert out.after == "BACKEND = 'gloo'\nOTHER = 'x'\n"
    assert [(m.rule_id, m.path, m.start_line) for m in out.matches] == [("a", "pkg/mod.py", 1)]


def test_required_rule_without_match_names_rule_and_file():
    with pytest.raises(PlanError, match=r"required rule a matched nothing in pkg/mod\.py"):
        rewrite_file("pkg/mod.py", "X = 1\n", [rule("a", replace_string("nccl", "gloo"))])


def test_optional_rule_without_match_is_fine():
    out = rewrite_file("pkg/mod.py", "X = 1\n", [rule("a", replace_string("nccl", "gloo"), required=False)])
    assert not out.changed


def test_two_rules_rewriting_the_same_node_conflict():
    rules = [rule("a", replace_string("nccl", "gloo")), rule("b", replace_string("nccl", "hccl"))]
    with pytest.raises(PlanError, match=r"pkg/mod\.py:1: rules a and b both rewrite the same code"):
        rewrite_file("pkg/mod.py", SOURCE, rules)


def test_rules_on_different_nodes_of_one_line_do_not_conflict():
    rules = [rule("a", replace_string("nccl", "gloo")), rule("b", replace_string("x", "y"))]
    out = rewrite_file("pkg/mod.py", "A, B = 'nccl', 'x'\n", rules)
    assert out.after == "A, B = 'gloo', 'y'\n"


def test_after_orders_rules_and_lets_them_compose():
    first = rule("z.first", replace_string("nccl", "gloo"))
    second = rule("a.second", replace_string("gloo", "hccl"), after=("z.first",))
    assert [r.id for r in order_rules([second, first])] == ["z.first", "a.second"]
    out = rewrite_file("pkg/mod.py", SOURCE, [second, first])
    assert out.after == "BACKEND = 'hccl'\nOTHER = 'x'\n"


def test_ordering_cycle_is_an_error():
    a = rule("a", replace_string("p", "q"), after=("b",))
    b = rule("b", replace_string("q", "r"), after=("a",))
    with pytest.raises(PlanError, match="cycle"):
        order_rules([a, b])


def test_unparsable_source_names_file_and_line():
    with pytest.raises(PlanError, match=r"pkg/mod\.py:2: cannot parse"):
        rewrite_file("pkg/mod.py", "X = 1\ndef (:\n", [rule("a", replace_string("nccl", "gloo"))])


def test_text_rule_rewrites_data_files():
    r = rule("c", ReplaceText('"a": 1', '"a": 2'), files=("pkg/conf.json",))
    out = rewrite_file("pkg/conf.json", '{\n"a": 1}\n', [r])
    assert out.after == '{\n"a": 2}\n' and out.matches[0].start_line == 2


def test_python_rule_needs_a_transformer():
    with pytest.raises(TypeError, match="RuleTransformer"):
        rule("bad", ReplaceText("a", "b"))
    with pytest.raises(ValueError, match="category"):
        Rule(id="x", target="t", files=("a.py",), category="misc", summary="", rewrite=replace_string("a", "b"), docs=DOCS)


@pytest.mark.parametrize("r", RULES, ids=lambda r: r.id)
def test_every_fixture_rule_is_a_fixpoint(r):
    from fixture_plugin import TOYLIB_FILES

    path = r.files[0]
    before = TOYLIB_FILES[path]
    import textwrap

    from porter.testing import rewrite

    after, _ = rewrite(r, before, path)
    assert after != textwrap.dedent(before).lstrip("\n")
    assert_untouched(r, after, path)


def test_assert_rewrites_helper_catches_a_non_fixpoint_rule():
    from porter.rules import RuleTransformer

    class Grow(RuleTransformer):
        def leave_SimpleString(self, original_node, updated_node):
            self.record(original_node, "grow")
            return updated_node.with_changes(value=updated_node.value[:-1] + "a'")

    with pytest.raises(AssertionError, match="not a fixpoint"):
        assert_rewrites(rule("grow", Grow), "X = 'a'\n", "X = 'aa'\n")


def test_rename_call_example():
    assert_rewrites(rule("s", rename_call("f", "g")), "f()\nh()\n", "g()\nh()\n")


# Rules apply one after another, each over the previous one's output.

class ReverseBody(RuleTransformer):
    """Reverses the statements of `def flip`, pairing nothing: rewrites the whole block."""

    def leave_FunctionDef(self, original_node, updated_node):
        if original_node.name.value != "flip":
            return updated_node
        self.record(original_node.name, "reversed")  # records the name, rewrites the whole body
        return updated_node.with_changes(body=updated_node.body.with_changes(body=list(reversed(updated_node.body.body))))


def _one_after_another(rules, text):
    for rule in rules:
        text, _ = apply_rule(rule, rule.files[0], text)
    return text


def test_rules_apply_one_after_another_in_after_order():
    source = "def flip():\n    a = old()\n    b = 2\n\ndef other():\n    return old()\n"
    rename = Rule(id="toy.rename", target="t", files=("m.py",), category="test", summary="s",
                  rewrite=rename_call("old", "new"), docs=DOCS)
    reverse = Rule(id="toy.reverse", target="t", files=("m.py",), category="test", summary="s",
                   rewrite=ReverseBody, docs=DOCS)
    # independent rules on separate code
    out = rewrite_file("m.py", "x = old()\ndef flip():\n    pass\n", [rename, reverse])
    assert out.after == _one_after_another([rename, reverse], "x = old()\ndef flip():\n    pass\n")
    # reverse rewrites a block in which rename changes a call: the second rule sees the first one's output
    out = rewrite_file("m.py", source, [rename, reverse])
    assert out.after == _one_after_another([reverse, rename], source) == \
        "def flip():\n    b = 2\n    a = new()\n\ndef other():\n    return new()\n"
    assert sorted((m.rule_id, m.start_line) for m in out.matches) == [
        ("toy.rename", 2), ("toy.rename", 6), ("toy.reverse", 1)]


class TagCallees(RuleTransformer):
    """Uses libcst's attribute hooks: counts what it sees under a call's ``func`` and renames ``old``."""

    def __init__(self, *a):
        super().__init__(*a)
        self.in_func = 0

    def visit_Call_func(self, node):
        self.in_func += 1

    def leave_Call_func(self, node):
        self.in_func -= 1

    def leave_Name(self, original_node, updated_node):
        if self.in_func and original_node.value == "old":
            self.record(original_node, "old -> new")
            return updated_node.with_changes(value="new")
        return updated_node


class SkipsByOnVisit(RuleTransformer):
    """Overrides on_visit/on_leave themselves: renames strings outside `def keep`."""

    def on_visit(self, node):
        return not (hasattr(node, "name") and getattr(node.name, "value", None) == "keep")

    def on_leave(self, original_node, updated_node):
        if isinstance(original_node, __import__("libcst").SimpleString) and original_node.value == "'a'":
            self.record(original_node, "a -> b")
            return updated_node.with_changes(value="'b'")
        return updated_node


def test_attribute_hooks_and_own_dispatch_work():
    source = "old(old)\nx = 'a'\ndef keep():\n    y = 'a'\n    old()\n"
    tag = rule("a.tag", TagCallees, files=("m.py",))
    skip = rule("b.skip", SkipsByOnVisit, files=("m.py",))
    out = rewrite_file("m.py", source, [tag, skip])
    assert out.after == _one_after_another([tag, skip], source) == \
        "new(old)\nx = 'b'\ndef keep():\n    y = 'a'\n    new()\n"
    assert [(m.rule_id, m.start_line) for m in out.matches] == [("a.tag", 1), ("b.skip", 2), ("a.tag", 5)]
