"""What each launched process runs: ``python -m porter.worker [--porter-env K=V ...] MODEL RECIPE ARGS``.

It sets the environment the parent decided, applies the port the way the parent chose (the installed files
are already patched, an import hook patches in memory, or nothing), then runs the recipe.
"""
from __future__ import annotations

import os
import sys


def _split(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env, rest = {}, []
    i = 0
    while i < len(argv):
        if argv[i] == "--porter-env":
            key, _, value = argv[i + 1].partition("=")
            env[key] = value
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return env, rest


def _say(line: str) -> None:
    """One write per line: ranks share the terminal, and print's separate write of the newline let two ranks'
    lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    env, rest = _split(list(sys.argv[1:] if argv is None else argv))
    os.environ.update(env)  # before torch, torch_npu or DeepSpeed are imported: they read these at import
    from . import plugins
    from .errors import PorterError
    from .launch import bind_this_worker

    try:  # --bind-cores: pinned before torch starts its threads, so every one of them inherits the cores
        bind_this_worker(env)
    except PorterError as exc:
        sys.stderr.write(f"error (rank {os.environ.get('RANK', '0')}): {exc.message}\n")
        return exc.exit_code
    from .recipes import find_recipe, recipe_parser

    registry = plugins.load(lazy=True)  # rules only if the in-memory plan is not already cached
    model, name, *recipe_argv = rest
    recipe = find_recipe(registry, model, name)
    assert recipe is not None  # the launcher names a recipe it found
    mode = os.environ.get("PORTER_PATCH", "off")
    rank = os.environ.get("RANK", "0")
    if mode == "memory":
        from . import memory

        for target in recipe.targets:
            prepared = memory.prepare_for(registry, target)
            patch = memory.install(prepared)
            detail = f"{len(patch.patch.sources)} modules" + (", cached plan" if patch.patch.cached else "")
            _say(f"porter worker {rank}: {target} patched in memory ({detail})")
    elif mode == "disk":
        _say(f"porter worker {rank}: {', '.join(recipe.targets)} patched on disk")
    else:
        _say(f"porter worker {rank}: no port applied")
    args = recipe_parser(recipe).parse_args(recipe_argv)
    try:
        return recipe.run(args) or 0
    except PorterError as exc:  # one clear line per rank, not a traceback
        _say(f"error (rank {rank}): {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
