"""`porter run MODEL RECIPE ...`: run a recipe a model plugin registers, in this process or on N devices through
porter's launcher."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import EXIT_OK
from ._common import EXIT_CODES, Command

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..recipes import Recipe
    from ..render import Console


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a registered model (default: list them)")
    p.add_argument("recipe", nargs="?", help="one of the model's recipes (default: list them)")
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from ..recipes import find_recipe, recipe_parser

    if args.model is None:
        rows = [(m.name, ", ".join(sorted(r.name for r in registry.recipes.values() if r.model == m.name)),
                 ", ".join(m.presets) or "-",
                 m.description) for m in registry.models.values()]
        con.print(con.table(("model", "recipes", "presets", "description"), rows) if rows else "no model plugins installed")
        return EXIT_OK
    recipe = find_recipe(registry, args.model, args.recipe)
    if recipe is None:
        recipes = [(r.name, r.description) for r in registry.recipes.values() if r.model == args.model]
        con.print(con.table(("recipe", "description"), recipes))
        formats = [(d.name, d.description) for d in registry.items["datasets"].values() if d.model == args.model]
        if formats:  # what its recipes' --data reads (the plugin's porter_register_datasets)
            con.print("\n" + con.table(("data format", "description"), formats))
        return EXIT_OK
    if not recipe.launch:
        from ..errors import PorterError
        from ..launch import port_here

        parsed = recipe_parser(recipe).parse_args(args.recipe_args)
        if recipe.targets:
            try:
                port_here(recipe, registry)
            except PorterError as exc:  # an unsupported release, a patch in another state: run what is installed
                con.note(f"porter: {', '.join(recipe.targets)} not ported in this process ({exc.message}); running "
                         "it as installed")
        if recipe.preflight:
            recipe.preflight(parsed)
        return recipe.run(parsed)
    return _launch(recipe, args.recipe_args, registry, con)


def _launch(recipe: Recipe, argv: list[str], registry: Registry, con: Console) -> int:
    """A recipe started on N devices: porter's launch options decide how, the recipe's own reach each worker."""
    from ..launch import add_launch_arguments, launch, plan_launch, recipe_argv
    from ..recipes import recipe_parser

    parser = recipe_parser(recipe)
    launch_flags = add_launch_arguments(parser)
    parsed = parser.parse_args(argv)  # every option checked here, before any worker starts
    plan = plan_launch(parsed, recipe, recipe_argv(argv, launch_flags), registry)  # runs the recipe's preflight, dry run or not
    for note in plan.notes:
        con.note(note)
    if parsed.dry_run:
        con.print(plan.render())
        return EXIT_OK
    con.note("launching: " + plan.render())
    return launch(plan)


def _recipes_listing(registry: Registry) -> str:
    lines = [f"  {r.model} {r.name:<8} {r.description}" for r in sorted(registry.recipes.values(), key=lambda r: r.key)]
    return ("recipes:\n" + "\n".join(lines) + "\n\n") if lines else ""


COMMAND = Command(
    "run", help="run a model's recipe (train, infer, check, demo)", add_arguments=add_arguments, handle=handle,
    description="Run a recipe a model plugin registers. Everything after RECIPE goes to the\n"
                "recipe; `porter run MODEL RECIPE --help` lists its options.",
    epilog=lambda registry: _recipes_listing(registry) +
    "examples:\n  porter run visualglm infer --image cat.png --prompt \"What's in the image?\" --english\n"
    "  porter run visualglm train --npus 8\n  porter run visualglm        (lists its recipes)\n\n" + EXIT_CODES)
