"""The torch rule pack, one module per part of the CUDA surface: ``calls`` (torch.cuda.X), ``tensors`` (.cuda(),
.is_cuda, typed tensors, pinned memory), ``strings`` (device strings, device-type checks), ``distributed``
(backend, DDP / FSDP devices), ``amp`` (autocast, GradScaler), ``environment`` (CUDA_VISIBLE_DEVICES, cudnn
flags). Every rule is for any code (``target="any"``), rewrites to ``porter.runtime.device`` and is a fixpoint.

``catalogue()`` lists, per rule, each API it rewrites and what the rewritten code calls instead;
``catalogue_markdown()`` is that list as the table in docs/porting-any-project.md."""
from __future__ import annotations

from . import amp, calls, distributed, environment, strings, tensors

ALL_RULES: list = [*calls.RULES, *tensors.RULES, *strings.RULES, *distributed.RULES, *amp.RULES,
                   *environment.RULES]

TABLE_START = "<!-- rule-table:start -->"
TABLE_END = "<!-- rule-table:end -->"


def catalogue() -> list[tuple[str, str, str]]:
    """(API, rule id, what the ported code calls) for every API the pack rewrites, in ALL_RULES' order."""
    return [(api, rule.id, runtime) for rule in ALL_RULES for api, runtime in rule.rewrite.CATALOGUE]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def catalogue_markdown() -> str:
    """The rule table of docs/porting-any-project.md, markers included (tests/torch_plugin keeps the page equal
    to it)."""
    lines = [TABLE_START, "", "| API | rule | ported code calls |", "|---|---|---|"]
    lines += [f"| `{_cell(api)}` | `{rule}` | `{_cell(runtime)}` |" for api, rule, runtime in catalogue()]
    return "\n".join([*lines, "", TABLE_END]) + "\n"
