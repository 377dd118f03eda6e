"""Every hook a porter plugin can implement, in one place.

A plugin is a module (or object) with functions decorated by ``porter.hookimpl`` and named as below.
Installed plugins are found through the entry-point group ``porter``::

    [project.entry-points.porter]
    mytarget = "my_package.porter_plugin"

Each ``porter_register_*`` hook receives a ``register`` callable and calls it once per item, so one plugin
can contribute any number of items; porter keeps the registry, remembers which plugin registered what
(``porter plugins`` shows it), and rejects a second item under a key that is already taken.

Hooks are called once per porter process, in no particular order between plugins, when the registry is
first needed. A hook that raises takes only its own plugin down: the plugin is reported by name and the
others keep working (``--strict`` makes that fatal). A misspelt hook name is an error at load time.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # annotations only: loading the hook specs imports no rule engine, torch or libcst
    from .recipes import DatasetFormat, Model, Recipe
    from .rules import Rule
    from .runtime.device import Device
    from .target import Target
    from .verify import Check

hookspec = pluggy.HookspecMarker("porter")

# ---------------------------------------------------------------------------------------------------
# Patching: what to rewrite and how to prove it worked
# ---------------------------------------------------------------------------------------------------


@hookspec
def porter_register_targets(register: Callable[[Target], None]) -> None:
    """Register installed libraries that porter may patch.

    ``register(target)`` takes a :class:`porter.target.Target`: its name (``sat``), the distribution it
    resolves to (``SwissArmyTransformer``), the top-level package directory, and the supported version
    range. ``porter patch NAME`` looks the target up by name.
    """


@hookspec
def porter_register_rules(register: Callable[[Rule], None]) -> None:
    """Register rewrite rules.

    ``register(rule)`` takes a :class:`porter.rules.Rule`: a stable id (``sat.device.synchronize``), the
    target name, the files it rewrites, a category, the rewrite itself (a libcst transformer class or a
    text rewrite for data files), its documentation (why, how, upstream, removal), the target versions it
    applies to (and ``file_versions`` for files that only some releases have), whether it is required, and the
    rules it must run ``after``. Rules for a target that no plugin registers are reported by ``porter plugins``
    and otherwise ignored.

    Called only when a command needs rules (not for ``porter status`` or ``revert``): import the module that
    defines them inside this hook, so the commands that need none stay fast. A plugin that raises here is
    dropped whole, as at load.
    """


@hookspec
def porter_register_checks(register: Callable[[Check], None]) -> None:
    """Register verification checks run by ``porter verify TARGET`` after the generic stages.

    ``register(check)`` takes a :class:`porter.verify.Check`: an id, the target name, a one-line
    description and ``run(context) -> Iterable[CheckResult]``. ``context`` gives the site-packages
    directory, the journal, and the saved original sources. A check that raises counts as failed; a
    check that cannot run on this machine yields a result with ``status="skip"`` and says why.

    Called, like ``porter_register_rules``, only when a command needs checks; import them inside the hook.
    """


# ---------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------


@hookspec
def porter_register_devices(register: Callable[[type[Device]], None]) -> None:
    """Register device backends beyond the built-in cpu, cuda and npu.

    ``register(device_class)`` takes a subclass of ``porter.runtime.device.Device``. Its ``name`` can then
    be chosen with ``PORTER_DEVICE`` or ``--device``; ``detect_order`` places it in auto-detection.
    """


# ---------------------------------------------------------------------------------------------------
# Models and recipes: what `porter run MODEL RECIPE` finds
# ---------------------------------------------------------------------------------------------------


@hookspec
def porter_register_models(register: Callable[[Model], None]) -> None:
    """Register models.

    ``register(model)`` takes an object with a ``name`` (``visualglm``), a one-line ``description`` and
    the presets it knows. ``porter run NAME ...`` starts from here.
    """


@hookspec
def porter_register_datasets(register: Callable[[DatasetFormat], None]) -> None:
    """Register data set formats.

    ``register(dataset)`` takes an object with a ``name`` (``coco``), the ``model`` it feeds, and a
    ``detect(path) -> bool`` used by ``--data-format auto``.
    """


@hookspec
def porter_register_recipes(register: Callable[[Recipe], None]) -> None:
    """Register recipes: the things a model can be run for (``train``, ``infer``).

    ``register(recipe)`` takes an object with ``model``, ``name``, ``description``,
    ``add_arguments(parser)`` and ``run(args) -> int``. ``porter run MODEL NAME --help`` shows the
    recipe's own options.
    """


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


@hookspec
def porter_register_commands(register: Callable[[str, str, Callable, Callable], None]) -> None:
    """Add top-level commands to the ``porter`` CLI.

    ``register(name, help, add_arguments, run)``: ``add_arguments(parser)`` fills an argparse
    sub-parser, ``run(args, registry) -> int`` does the work and returns the exit code. A name that a
    built-in command already uses fails the plugin, as a key another plugin owns does: its error (the
    warning, `porter plugins`, fatal with ``--strict``) names the command it clashes with, and the
    built-in is kept.
    """
