"""imports: make SAT's undeclared hard imports optional, so `import sat` works where they are absent."""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer

from .runtime import OPTIONAL, code


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
    id="sat.imports.wandb",
    target="sat",
    files=("sat/training/deepspeed_training.py",),
    category="imports",
    summary="`import wandb` at the top of deepspeed_training.py becomes optional",
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


class GuardTritonImport(RuleTransformer):
    """``from .triton_rotary import apply_rotary`` -> the same inside try/except ImportError with a stand-in."""

    def leave_SimpleStatementLine(self, original_node, updated_node):
        if len(updated_node.body) == 1 and code(updated_node) == "from.triton_rotaryimportapply_rotary":
            self.record(original_node, "triton import guarded; apply_rotary raises a clear ImportError when used")
            alias = self.require_import(*OPTIONAL).value
            guarded = cst.parse_statement(
                "try:\n"
                "    from .triton_rotary import apply_rotary\n"
                "except ImportError as porter_import_error:  # triton is optional: only FastRotaryEmbedding needs it\n"
                f"    apply_rotary = {alias}.missing('triton', 'apply_rotary', porter_import_error)\n")
            return cst.FlattenSentinel([guarded])
        return updated_node

    def visit_Try(self, node):
        return False


TRITON = Rule(
    id="sat.imports.triton",
    target="sat",
    files=("sat/model/position_embedding/triton_rotary_embeddings.py",),
    category="imports",
    summary="triton becomes optional: only FastRotaryEmbedding needs it",
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
