"""The torch rule pack as a whole: its rules' ids and docs, the generated rule table, `# porter: skip`, and golden
files run through every rule together (as `porter patch` runs them)."""
import re
from pathlib import Path

import pytest
from porter_torch.rules import ALL_RULES, TABLE_END, TABLE_START, calls, catalogue, catalogue_markdown, tensors

import porter.rewrite as engine
from porter.rewrite import rewrite_file
from porter.rules import ANY_TARGET
from porter.testing import assert_untouched

FIXTURES = Path(__file__).with_name("fixtures")
DOC = Path(__file__).parents[2] / "docs" / "porting-any-project.md"
GOLDEN = sorted(FIXTURES.glob("*.in.py"))


def test_rules_are_named_documented_and_for_any_code():
    ids = [rule.id for rule in ALL_RULES]
    assert len(ids) == len(set(ids)) and len(ids) >= 20
    known = set(ids)
    for rule in ALL_RULES:
        assert re.fullmatch(r"torch\.device\.[a-z0-9-]+", rule.id), rule.id
        assert rule.target == ANY_TARGET and not rule.required and rule.category == "device" and rule.triggers
        assert rule.summary and rule.docs.why and rule.docs.how and rule.docs.upstream and rule.docs.removal
        assert set(rule.after) <= known, rule.id
        assert rule.rewrite.CATALOGUE, f"{rule.id} has no entry in the rule table"


def test_the_plugin_registers_every_rule():
    from porter_torch import plugin

    registered = []
    plugin.porter_register_rules(registered.append)
    assert registered == ALL_RULES


def test_the_rule_table_in_the_docs_is_the_generated_one():
    text = DOC.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    assert text[start:end] + "\n" == catalogue_markdown(), \
        "regenerate the table in docs/porting-any-project.md from porter_torch.rules.catalogue_markdown()"
    assert {rule for _, rule, _ in catalogue()} == {rule.id for rule in ALL_RULES}


def test_every_runtime_call_in_the_table_exists():
    from porter.runtime import device

    for _, _, runtime in catalogue():
        for name in re.findall(r"porter_device\.(\w+)", runtime):
            assert callable(getattr(device, name, None)), name


def test_porter_skip_leaves_a_statement_alone():
    assert_untouched(tensors.DOT_CUDA, """
        import torch
        model = model.cuda()  # porter: skip
    """)
    assert_untouched(calls.SYNCHRONIZE, """
        import torch
        # porter: skip
        torch.cuda.synchronize()
    """)
    out = rewrite_file("example.py", "import torch\n"
                                "x = torch.zeros(3, device='cuda')  # porter: skip\n"
                                "y = torch.zeros(3, device='cuda')\n"
                                "if torch.cuda.is_available():  # porter: skip\n"
                                "    torch.cuda.synchronize()\n", ALL_RULES, enforce_required=False).after
    assert "x = torch.zeros(3, device='cuda')  # porter: skip\n" in out
    assert "y = torch.zeros(3, device=porter_device.device_string('cuda'))\n" in out
    assert "if torch.cuda.is_available():  # porter: skip\n    porter_device.synchronize()\n" in out


@pytest.mark.parametrize("source", GOLDEN, ids=[p.name.removesuffix(".in.py") for p in GOLDEN])
def test_golden_files_through_the_whole_pack(source, monkeypatch):
    expected = source.with_name(source.name.replace(".in.py", ".out.py")).read_text()
    text = source.read_text()
    ported = rewrite_file(source.name, text, ALL_RULES, enforce_required=False)
    assert ported.after == expected, f"regenerate {source.name.replace('.in.py', '.out.py')} if this change is meant"
    assert ported.matches
    again = rewrite_file(source.name, ported.after, ALL_RULES, enforce_required=False)
    assert again.after == ported.after and not again.matches, "the pack is not a fixpoint on its own output"
    # the reference path (the whole file, one rule at a time) agrees with the planner's
    assert engine._one_at_a_time(source.name, text, list(ALL_RULES), enforce_required=False).after == expected
    compile(ported.after, source.name, "exec")


def test_golden_outputs_name_no_cuda_only_call():
    from porter.scan import find_sites

    for source in GOLDEN:
        if source.name.startswith("guards"):
            continue  # keeps the guards of CUDA-only code on purpose
        out = source.with_name(source.name.replace(".in.py", ".out.py"))
        left = [s for s in find_sites(out.name, out.read_text()) if s.kind in ("torch.cuda", ".cuda()")]
        assert not left, left


def test_requires_only_spares_the_parser(tmp_path):
    """Rule.requires keeps files from the parser, never a change: DeepSpeed's accelerator and utils folders (real
    code, full of 'device' and 'seed') plan to the same result with and without it, parsing fewer files."""
    import dataclasses
    import shutil

    import deepspeed
    from porter_torch.rules import ALL_RULES

    from porter.generic import folder_target
    from porter.plan import make_plan

    root = Path(deepspeed.__file__).parent
    for part in ("accelerator", "utils"):
        shutil.copytree(root / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    target = folder_target(tmp_path)
    gated = make_plan(target, ALL_RULES)
    ungated = make_plan(target, [dataclasses.replace(rule, requires=()) for rule in ALL_RULES])
    assert [(f.path, f.after) for f in gated.changed] == [(f.path, f.after) for f in ungated.changed]
    assert gated.changed and len(gated.files) < len(ungated.files)
