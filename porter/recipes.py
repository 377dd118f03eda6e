"""What `porter run MODEL RECIPE` finds: models, their data formats and their recipes, as plugins register them."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .diskio import atomic_write, cache_dir  # noqa: F401  (for recipes: what they build once, and where)
from .errors import NotFoundError

DEVICE_HELP = ("auto: the first of npu, cuda, cpu present (with a warning when it is the CPU); or a device by name, a "
               "plugin's included (`porter plugins` lists them)")


def device_name(value: str) -> str:
    """The argparse type of every ``--device``: ``auto`` or a device the runtime knows, plugin devices included (a
    plugin's devices join the runtime when porter loads plugins, before any parser reads an argument)."""
    if value == "auto":
        return value
    from .runtime import device

    known = sorted(device.known())
    if value not in known:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device porter knows (auto, {', '.join(known)})")
    return value


def add_device_argument(parser, help: str = DEVICE_HELP) -> argparse.Action:
    """``--device`` as every recipe and `porter run` take it."""
    return parser.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda|npu|PLUGIN", help=help)


def use_device(args) -> None:
    """A recipe that runs in this process uses ``--device``: set before anything selects the device."""
    import os

    if getattr(args, "device", "auto") != "auto":
        os.environ["PORTER_DEVICE"] = args.device
        from .runtime import device

        device.reset()


@dataclass(frozen=True)
class Model:
    name: str  # what users type: `porter run visualglm ...`
    description: str
    presets: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetFormat:
    name: str  # --data-format value
    model: str
    description: str
    detect: Callable[[object], bool] = field(default=lambda path: False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.model}.{self.name}"


@dataclass(frozen=True)
class Recipe:
    model: str
    name: str  # `porter run MODEL NAME`
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None] = field(compare=False)
    run: Callable[[argparse.Namespace], int] = field(compare=False)
    epilog: str = ""  # examples for --help
    launch: bool = False  # started on N devices through DeepSpeed's launcher (porter's --npus, --device, ...)
    # targets whose port the recipe needs: its workers', or (not launched) this process's (on disk or in memory)
    targets: tuple[str, ...] = ()
    # Runs in the parent with the parsed arguments before anything is launched or written: raise a PorterError
    # for input that cannot work (data, checkpoint, tokenizer), so it is one line here and not one per worker.
    preflight: Callable[[argparse.Namespace], None] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.model}.{self.name}"


def find_recipe(registry, model: str, name: str | None) -> Recipe | None:
    if model not in registry.models:
        known = ", ".join(sorted(registry.models)) or "none"
        raise NotFoundError(f"unknown model {model!r} (known: {known})",
                            hint="`porter plugins` shows what each plugin registers")
    if name is None:
        return None
    recipe = registry.recipes.get(f"{model}.{name}")
    if recipe is None:
        known = ", ".join(sorted(r.name for r in registry.recipes.values() if r.model == model)) or "none"
        raise NotFoundError(f"model {model!r} has no recipe {name!r} (recipes: {known})")
    return recipe


def single_process_defaults() -> None:
    """RANK, LOCAL_RANK and WORLD_SIZE as a launcher would set them for one process, where none did: for a recipe
    or a check that runs a distributed library in one process (DeepSpeed insists on LOCAL_RANK; SAT reads all
    three)."""
    import os

    for var, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(var, default)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _number(text, int, lambda v: v >= 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "0 or more")


# numpy's seed range: SAT seeds numpy, python and torch with the one value, and numpy refuses 2**32 and above
SEED_MAX = 2 ** 32 - 1


def seed(text: str) -> int:
    """argparse type: a random seed numpy, torch and python all accept, 0 to 2**32 - 1."""
    return _number(text, int, lambda v: 0 <= v <= SEED_MAX, f"0 to {SEED_MAX}")


def positive_seed(text: str) -> int:
    """argparse type: a seed as :func:`seed`, but at least 1 (SAT seeds nothing for 0)."""
    return _number(text, int, lambda v: 1 <= v <= SEED_MAX, f"1 to {SEED_MAX}")


def port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    return _number(text, int, lambda v: 1 <= v <= 65535, "a TCP port, 1 to 65535")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "more than 0")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "0 or more")


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(text, float, lambda v: 0 < v <= 1, "in (0, 1]")


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "in [0, 1)")


def _number(text: str, kind, ok, wanted: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, not {text!r}") from None
    # float() reads "inf", "1e999" and "nan", and nan compares false with everything: without this an infinite
    # learning rate passes "more than 0", and nan is refused with a range it does not miss
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, not {text}")
    return value


def recipe_parser(recipe: Recipe) -> argparse.ArgumentParser:
    # no abbreviations: porter strips its launch options from what it forwards to workers by exact name
    parser = argparse.ArgumentParser(prog=f"porter run {recipe.model} {recipe.name}", description=recipe.description,
                                     epilog=recipe.epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    recipe.add_arguments(parser)
    return parser
