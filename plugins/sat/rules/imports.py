"""imports: make SAT's undeclared hard imports optional, so `import sat` works where they are absent."""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer

from .runtime import OPTIONAL


class DropUnguardedWandbImport(RuleTransformer):
    """Remove a module-level ``import wandb`` that is not inside a ``try``.

    SAT 0.4.12 imports wandb twice in `training/deepspeed_training.py`: bare at the top, then again inside
    ``try/except ImportError``. Dropping the bare one leaves the guarded import in charge.
    """

    def leave_SimpleStatementLine(self, original_node, updated_node):
        if m.matches(updated_node, m.SimpleStatementLine(body=[m.Import(names=[m.ImportAlias(name=m.Name("wandb"), asname=None)])])):
            self.record(original_node, "dropped the unguarded `import wandb` (a guarded one follows)")
            return cst.RemoveFromParent()
        return updated_node

    def visit_Try(self, node):
        return False  # the guarded import stays

    def visit_FunctionDef(self, node):
        return False  # imports inside functions run only when that function is used

    def visit_ClassDef(self, node):
        return False


WANDB = Rule(
    versions=">=0.4.12",
    id="sat.imports.wandb",
    target="sat",
    files=("sat/training/deepspeed_training.py",),
    category="imports",
    summary="`import wandb` at the top of deepspeed_training.py becomes optional",
    triggers=("wandb",),
    rewrite=DropUnguardedWandbImport,
    docs=RuleDocs(
        why="Since 0.4.12 `import sat` reaches `import wandb` through sat.training, and SAT does not declare "
            "wandb as a dependency: without it SAT cannot be imported at all.",
        how="Removes the module-level bare `import wandb`; the `try: import wandb / except ImportError` a few "
            "lines further down stays, so wandb is still used when installed and `--wandb` is given.",
        upstream="sat/training/deepspeed_training.py, SwissArmyTransformer 0.4.12 (bare import added beside "
                 "the guarded one)",
        removal="When SAT declares wandb or drops the bare import.",
    ),
)


# `from .triton_rotary import ...` or the same module named in full
TRITON_KERNELS = m.SimpleStatementLine(body=[
    m.ImportFrom(module=m.Name("triton_rotary"), relative=[m.Dot()])
    | m.ImportFrom(module=m.Attribute(attr=m.Name("triton_rotary")), relative=[])])


class GuardTritonImport(RuleTransformer):
    """An unguarded import from the triton kernels module -> the same inside try/except ImportError, each
    imported name bound to a stand-in that raises a clear ImportError when used."""

    def leave_SimpleStatementLine(self, original_node, updated_node):
        if not m.matches(updated_node, TRITON_KERNELS) or isinstance(updated_node.body[0].names, cst.ImportStar):
            return updated_node
        names = [(a.asname.name if a.asname else a.name).value for a in updated_node.body[0].names]
        self.record(original_node, f"triton import guarded; {', '.join(names)} raise(s) a clear ImportError when used")
        alias = self.require_import(*OPTIONAL).value
        handler = "".join(f"    {n} = {alias}.missing('triton', {n!r}, porter_import_error)\n" for n in names)
        guarded = cst.parse_statement(
            "try:\n    pass\n"
            "except ImportError as porter_import_error:  # triton is optional: only FastRotaryEmbedding needs it\n"
            + handler)
        assert isinstance(guarded, cst.Try)  # the text parsed above is a try statement
        body = guarded.body.with_changes(body=[updated_node.with_changes(leading_lines=[])])
        return guarded.with_changes(body=body, leading_lines=updated_node.leading_lines)

    def visit_Try(self, node):
        return False


TRITON = Rule(
    versions=">=0.4.7",
    id="sat.imports.triton",
    target="sat",
    files=("sat/model/position_embedding/triton_rotary_embeddings.py",),
    category="imports",
    summary="triton becomes optional: only FastRotaryEmbedding needs it",
    triggers=("triton_rotary",),
    rewrite=GuardTritonImport,
    docs=RuleDocs(
        why="Since 0.4.7 `import sat` imports triton (through sat.model.position_embedding and five official "
            "models) although only FastRotaryEmbedding uses it. triton is undeclared and has no NPU build, so "
            "SAT cannot be imported on an Ascend machine or any machine without triton.",
        how="The one import of the triton kernels is wrapped in try/except ImportError; when it fails, "
            "apply_rotary is a stand-in that raises ImportError naming triton the moment it is used.",
        upstream="sat/model/position_embedding/triton_rotary_embeddings.py (FastRotaryEmbedding, added in 0.4.7)",
        removal="When SAT imports triton lazily or declares it.",
    ),
)

RULES = [TRITON, WANDB]
