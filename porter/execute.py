"""`porter exec -- python SCRIPT.py ARGS`: run a program with the port in memory, touching none of its files.

The parent (this module) plans the port of the program's own folder and of the ``--target``s with the rules for
any code, as `porter patch` would, and writes the planned sources to porter's cache (a *manifest*: file -> ported
source). It then runs the command unchanged, with two things in its environment:

- ``PYTHONPATH`` starts with porter's boot folder, whose ``sitecustomize`` (porter/boot/sitecustomize.py) runs in
  every Python process the program starts (multiprocessing spawn, torchrun's and DeepSpeed's workers, a
  ``subprocess`` of ``python x.py``): it installs an import hook that serves the ported source for exactly the
  manifest's files, found by their path (so a module imported under any name, from any ``sys.path`` layout, is
  served), then hands over to the site's own ``sitecustomize`` if there is one.
- ``PORTER_EXEC_MANIFEST`` names the manifest.

A script run as ``python SCRIPT.py`` is read by the interpreter itself, not imported, so a process whose script is
in the manifest replaces itself (``os.execv``, before any of the program's code ran) with ``python -m
porter.execmain SCRIPT.py ARGS``, which runs the ported script as ``__main__`` the way Python would, under a
module spec named for the script so that multiprocessing's spawned children re-import it by name, through the
hook. Everything else sees the truth: modules not named are never rewritten (``torch.cuda.is_available()`` is not
faked for them; ``torch.jit.script`` and ``torch.compile`` are untouched). The program's exit status and output
are porter exec's own.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import diskio
from .errors import EXIT_COMMAND_NOT_FOUND, InputError, PorterError, StateError
from .target import InstalledTarget

MANIFEST_ENV = "PORTER_EXEC_MANIFEST"
BOOT_SOURCE = Path(__file__).parent / "boot" / "sitecustomize.py"
MAX_FOLDER_FILES = 20000  # a script's folder bigger than this is not a project: name the target instead


@dataclass
class Prepared:
    manifest: Path
    env: dict[str, str]
    files: int  # ported files served
    targets: list[str]


def script_of(command: Sequence[str]) -> tuple[Path | None, str | None]:
    """The program's own script (the first argument naming an existing ``*.py`` file: ``python x.py``, ``torchrun
    --nproc_per_node 2 x.py``, ``deepspeed x.py``, ``./x.py`` run by its shebang), or the module of ``python -m
    MODULE``."""
    if command and command[0].endswith(".py") and Path(command[0]).is_file():
        return Path(command[0]).resolve(), None
    for i, arg in enumerate(command[1:], 1):
        if arg == "-m" and i + 1 < len(command) and _is_python(command[0]):
            return None, command[i + 1]
        if arg == "-c" and _is_python(command[0]):
            return None, None
        if arg.endswith(".py") and Path(arg).is_file():
            return Path(arg).resolve(), None
    return None, None


def isolating_flags(command: Sequence[str]) -> str | None:
    """A Python flag that makes the interpreter ignore PYTHONPATH (-I, -E, also combined as -IE, -Ic ...): the
    port could not reach it."""
    if not command or not _is_python(command[0]):
        return None
    for arg in command[1:]:
        if not arg.startswith("-") or arg.startswith("--") or arg in ("-m", "-c"):
            return None
        letters = arg[1:]
        for letter in letters:
            if letter in "IE":
                return f"-{letter}"
            if letter in "cmWX":  # the rest of the word is the flag's value
                break
    return None


def _is_python(program: str) -> bool:
    name = Path(program).name
    return name.startswith("python") or Path(program).resolve() == Path(sys.executable).resolve()


PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def own_folder(command: Sequence[str]) -> Path | None:
    """The folder the program's own code is in: the project the script belongs to (the nearest folder above it
    holding pyproject.toml, setup.py, setup.cfg or .git; `scripts/train.py` imports its project's packages), else
    the script's folder; for ``-m MODULE``, the working folder when the module's package or file is there."""
    script, module = script_of(command)
    if script is not None:
        home = Path.home().resolve()
        for folder in script.parents:
            if folder == home or folder.parent == folder:
                break
            if any((folder / marker).exists() for marker in PROJECT_MARKERS):
                return folder
        return script.parent
    if module:
        top = module.split(".")[0]
        here = Path.cwd()
        if (here / top).is_dir() or (here / f"{top}.py").is_file():
            return here
    return None


def prepare(command: Sequence[str], targets: Sequence[InstalledTarget], rules: Callable[[], list],
            plugin_digest: str, progress: Callable[[str], None] = lambda _m: None) -> Prepared:
    """Plan every target in memory (cached by its files' bytes), write the manifest, and return the environment
    the command runs in."""
    try:
        return _prepare(command, targets, rules, plugin_digest, progress)
    except OSError as exc:  # porter's own cache: a read-only home, a file where the folder must be
        raise StateError(f"porter's cache cannot be written ({exc.strerror or exc}: {exc.filename}); nothing was run",
                         hint="set PORTER_CACHE to a writable folder") from None


def _prepare(command: Sequence[str], targets: Sequence[InstalledTarget], rules: Callable[[], list],
             plugin_digest: str, progress: Callable[[str], None]) -> Prepared:
    from .memory import ported_sources

    served: dict[str, str] = {}
    names = []
    for installed in targets:
        served.update(ported_sources(installed, rules, plugin_digest, progress,
                                     check_files=functools.partial(_not_too_many, installed.root)).sources)
        names.append(installed.name)
    manifest = write_manifest(served)
    boot = boot_folder()
    env = dict(os.environ)
    env[MANIFEST_ENV] = str(manifest)
    env["PYTHONPATH"] = os.pathsep.join([str(boot), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    return Prepared(manifest, env, len(served), names)


def _not_too_many(root: Path, files: list[str]) -> None:
    if len(files) > MAX_FOLDER_FILES:
        raise InputError(f"{root} holds {len(files)} Python files: too many for a program's own folder",
                         hint="name what to port with --target, and leave the script's folder out with "
                              "--no-script-folder")


def write_manifest(files: dict[str, str]) -> Path:
    """The manifest the boot file reads: file path -> the source Python is to read for it."""
    text = json.dumps({"files": files}, sort_keys=True).encode()
    manifest = diskio.cache_dir("exec") / f"manifest-{hashlib.sha256(text).hexdigest()[:24]}.json"
    if not manifest.is_file():
        diskio.atomic_write(manifest, text)
    return manifest


def boot_folder() -> Path:
    """porter's boot folder in its cache: the sitecustomize every process of the program imports first."""
    source = BOOT_SOURCE.read_bytes()
    folder = diskio.cache_dir("exec") / f"boot-{hashlib.sha256(source).hexdigest()[:16]}"
    try:
        current = (folder / "sitecustomize.py").read_bytes()
    except OSError:
        current = None
    if current != source:
        diskio.atomic_write(folder / "sitecustomize.py", source)
    return folder


def require_command(program: str, env: Mapping[str, str] | None = None) -> None:
    """Refuse (exit 127, as a shell) a program that is neither a file nor found on the ``PATH`` of ``env``, the
    environment it runs with (default: this process's, whose ``PATH`` :func:`prepare` passes on unchanged)."""
    path = (os.environ if env is None else env).get("PATH")
    if shutil.which(program, path=path) is None and not Path(program).is_file():
        raise PorterError(f"{program}: command not found; nothing was run", exit_code=EXIT_COMMAND_NOT_FOUND)


def run(command: Sequence[str], prepared: Prepared) -> int:
    """Run the command with the port in the environment; its exit status (128 + N for a signal, as a shell)."""
    program = command[0]
    require_command(program, prepared.env)
    try:
        proc = subprocess.Popen(list(command), env=prepared.env)
    except OSError as exc:
        raise PorterError(f"{program}: cannot be run ({exc.strerror or exc}); nothing was run",
                          exit_code=EXIT_COMMAND_NOT_FOUND) from None
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the program got the same SIGINT from the terminal: wait for it to end
            continue
    return 128 - code if code < 0 else code
