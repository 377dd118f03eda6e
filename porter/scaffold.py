"""`porter new-plugin NAME --kind target|model`: a plugin package that installs with ``pip install -e``, registers
through the ``porter`` entry-point group, and passes its own tests at once.

- ``target``: a Target for the library NAME, one documented rule (``torch.cuda.synchronize()`` ->
  ``porter.runtime.device.synchronize()``) with its source-in / source-out tests, a patch / revert round trip
  on a throwaway copy of the library, and a verify check.
- ``model``: a Model with a ``train`` recipe that fits a tiny network for a few steps on porter's device layer
  (CPU, CUDA or NPU), and its tests.

The files are written into a fresh folder, all or nothing: a failure leaves no half-written package.
"""
from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from pathlib import Path
from string import Template

from .errors import EXIT_USAGE, PorterError

KINDS = ("target", "model")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "porter-$name"
version = "0.1.0"
description = "$description"
requires-python = ">=3.10"
dependencies = ["porter"]

# porter finds the plugin through this entry point once the package is installed (pip install -e .)
[project.entry-points.porter]
$name = "$package.plugin"

[tool.setuptools]
packages = ["$package"]
"""

README = """\
# porter-$name

$description

```
pip install -e .                         # registers the plugin with porter (see `porter plugins`)
python -m pytest tests                   # its tests
```

$usage

How plugins work, every hook and the test helpers: porter's `docs/writing-plugins.md`.
"""

TARGET_FILES = {
    "$package/__init__.py": '"""porter target plugin for $name."""\n',
    "$package/plugin.py": '''\
"""Entry point of the $name target plugin: the target, its rules and its checks."""
import porter
from porter.target import Target

from .checks import CHECKS
from .rules import RULES


@porter.hookimpl
def porter_register_targets(register):
    # versions: the releases the rules were written against (PEP 440); porter refuses others until you add them
    register(Target(name="$name", distribution="$name", package="$package_dir", versions=">=1.0"))


@porter.hookimpl
def porter_register_rules(register):
    for rule in RULES:
        register(rule)


@porter.hookimpl
def porter_register_checks(register):
    for check in CHECKS:
        register(check)
''',
    "$package/rules.py": '''\
"""The rules that port $name. One transformer per rule, each with its documentation."""
import libcst as cst
from porter.rules import Rule, RuleDocs, RuleTransformer


class SynchronizeAnyDevice(RuleTransformer):
    """``torch.cuda.synchronize()`` -> ``porter_device.synchronize()``, however torch was imported."""

    def leave_Call(self, original_node, updated_node):
        if self.refers_to(original_node.func, "torch.cuda.synchronize"):  # by meaning, through the imports
            self.record(original_node, "torch.cuda.synchronize() -> porter_device.synchronize()")
            alias = self.require_import("porter.runtime.device", "porter_device")
            return updated_node.with_changes(func=cst.Attribute(alias, cst.Name("synchronize")))
        return updated_node


SYNCHRONIZE = Rule(
    id="$name.device.synchronize", target="$name", files=("$package_dir/timers.py",), category="device",
    summary="timers synchronise whatever device porter runs on", rewrite=SynchronizeAnyDevice,
    triggers=("synchronize",),  # the planner shows the rule only the statements that hold this word
    docs=RuleDocs(why="torch.cuda.synchronize() raises where there is no CUDA (an NPU, the CPU).",
                  how="The call goes to porter.runtime.device.synchronize(), which synchronises the current "
                      "device (a no-op on the CPU).",
                  upstream="(link the upstream issue or pull request that would make this rule unnecessary)",
                  removal="When $name synchronises through a device-neutral API."))

RULES = [SYNCHRONIZE]
''',
    "$package/checks.py": '''\
"""`porter verify $name` checks: properties of the patched files a rule's tests cannot see."""
from porter.verify import FAIL, OK, Check, CheckResult


def no_cuda_synchronize_left(context):
    for rel in context.patched_files:
        text = (context.site_packages / rel).read_text()
        left = "torch.cuda.synchronize" in text
        yield CheckResult("plugin", rel, FAIL if left else OK,
                          "torch.cuda.synchronize is still called" if left else "")


CHECKS = [Check("$name.no-cuda-synchronize", "$name", "patched files call no torch.cuda.synchronize",
                no_cuda_synchronize_left)]
''',
    "tests/test_rules.py": '''\
"""The rule on source in / source out, and the whole plugin on a throwaway copy of $name."""
from porter.testing import assert_rewrites, assert_untouched, make_distribution, run_porter, tree_digest

from $package.rules import SYNCHRONIZE

TIMERS = "import torch\\n\\n\\ndef elapsed(start, end):\\n    torch.cuda.synchronize()\\n    return end - start\\n"


def test_the_call_goes_to_porters_device_layer():
    assert_rewrites(SYNCHRONIZE, "import torch as th\\nth.cuda.synchronize()\\n",
                    "import torch as th\\nimport porter.runtime.device as porter_device\\n\\n"
                    "porter_device.synchronize()\\n")


def test_lookalikes_are_left_alone():
    assert_untouched(SYNCHRONIZE, "import torch\\ntorch.npu.synchronize()\\n")
    assert_untouched(SYNCHRONIZE, "def f(torch):\\n    torch.cuda.synchronize()\\n")  # a parameter, not torch


def test_patch_verify_and_revert_a_copy_of_the_library(tmp_path):
    site = make_distribution(tmp_path / "site-packages", "$name", "1.0", {"$package_dir/__init__.py": "",
                                                                         "$package_dir/timers.py": TIMERS})
    before = tree_digest(site)
    patched = run_porter("patch", "$name", site_packages=site)
    assert patched.returncode == 0, patched.stderr
    assert "porter_device.synchronize()" in (site / "$package_dir" / "timers.py").read_text()
    verified = run_porter("verify", "$name", site_packages=site)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    reverted = run_porter("revert", site_packages=site)
    assert reverted.returncode == 0, reverted.stderr
    assert tree_digest(site) == before
''',
}

MODEL_FILES = {
    "$package/__init__.py": '"""porter model plugin for $name."""\n',
    "$package/plugin.py": '''\
"""Entry point of the $name model plugin: the model and its recipes."""
import porter
from porter.recipes import Model, Recipe

from . import train


@porter.hookimpl
def porter_register_models(register):
    register(Model("$name", "$name: a tiny network to start from", presets=("tiny",)))


@porter.hookimpl
def porter_register_recipes(register):
    register(Recipe("$name", "train", "fit the tiny $name network for a few steps on any device",
                    train.add_arguments, train.run, epilog=train.EPILOG))
''',
    "$package/train.py": '''\
"""`porter run $name train`: a tiny network fitted for a few steps on porter's current device.

Import torch inside `run`, not at the top: `porter plugins`, `--help` and `status` load this module and must
stay fast.
"""
from porter.recipes import positive_float, positive_int

EPILOG = """\\
examples:
  porter run $name train --steps 20
  PORTER_DEVICE=cpu porter run $name train --steps 2
"""


def add_arguments(parser):
    parser.add_argument("--steps", type=positive_int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--seed", type=int, default=0)


def fit(steps, lr, seed=0):
    """The loss after each step of fitting y = 3x - 1 with a 1-16-1 network."""
    import torch
    from porter.runtime import device

    torch.manual_seed(seed)
    where = device.current_device()
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(where)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.linspace(-1, 1, 64, device=where).unsqueeze(1)
    y = 3 * x - 1
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def run(args):
    from porter.runtime import device

    print(f"training on {device.current().name}")
    for step, loss in enumerate(fit(args.steps, args.lr, args.seed), start=1):
        print(f"step {step}: loss {loss:.4f}")
    return 0
''',
    "tests/test_train.py": '''\
"""The recipe learns, and runs through the porter CLI as users run it."""
from porter.testing import run_porter

from $package.train import fit


def test_the_loss_falls():
    losses = fit(steps=40, lr=0.05)
    assert losses[-1] < losses[0] / 4


def test_the_recipe_runs_two_steps_through_the_cli():
    r = run_porter("run", "$name", "train", "--steps", "2", env={"PORTER_DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr
    assert "training on cpu" in r.stdout and "step 2: loss" in r.stdout
''',
}


def scaffold(name: str, kind: str, parent: Path) -> Path:
    """Write the plugin package for ``name`` under ``parent``; returns its folder."""
    if kind not in KINDS:
        raise PorterError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}", exit_code=EXIT_USAGE)
    if not _NAME.match(name):
        raise PorterError(f"{name!r}: a plugin name is lower-case letters, digits, '-' and '_', starting with a "
                          f"letter", hint="e.g. mylib, my-model", exit_code=EXIT_USAGE)
    ident = name.replace("-", "_")
    if keyword.iskeyword(ident):
        raise PorterError(f"{name!r} is a Python keyword; pick another name", exit_code=EXIT_USAGE)
    folder = Path(parent) / f"porter-{name}"
    if folder.exists():
        raise PorterError(f"{folder} already exists; nothing written", hint="pick another --dir or name",
                          exit_code=EXIT_USAGE)
    values = {"name": name, "package": f"porter_{ident}", "package_dir": ident}
    if kind == "target":
        values["description"] = f"porter target plugin for {name}: rules that port it off CUDA-only calls"
        values["usage"] = (f"`porter rules {name}`, `porter patch {name} --dry-run`, `porter patch {name} --verify`, "
                           f"`porter revert`.")
        files = TARGET_FILES
    else:
        values["description"] = f"porter model plugin for {name}: its recipes on any device porter supports"
        values["usage"] = f"`porter run {name} train --steps 20`."
        files = MODEL_FILES
    files = {"pyproject.toml": PYPROJECT, "README.md": README, **files}
    Path(parent).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".porter-{name}-", dir=parent))
    try:
        for rel, text in files.items():
            path = staging / Template(rel).substitute(values)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(text).substitute(values))
        os.replace(staging, folder)  # all or nothing
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
