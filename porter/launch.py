"""Starting a recipe on N devices per node through DeepSpeed's launcher (multi-node through its hostfile).

The parent decides everything once (device, process-group backend, visible devices, how the port is
applied) and hands it to each worker on its command line, so the same settings reach remote nodes whatever
launcher DeepSpeed uses there.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import os
import re
import shlex
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass, field

from .errors import EXIT_USAGE, InputError, PorterError
from .recipes import Recipe, add_device_argument, port, positive_int

PATCH_MODES = ("auto", "disk", "memory", "off")


def add_launch_arguments(p: argparse.ArgumentParser) -> dict[str, bool]:
    """Add porter's launch options to a recipe's parser; returns each of their flags -> whether it takes a value:
    what :func:`recipe_argv` leaves out of the arguments workers see."""
    g = p.add_argument_group("launch (porter)")
    actions = [
        g.add_argument("--npus", type=positive_int, default=1, metavar="N",
                       help="workers per node: one per NPU / GPU, or N CPU processes with --device cpu (default 1)"),
        add_device_argument(g),
        g.add_argument("--hostfile", help="DeepSpeed hostfile ('host slots=N' per line, # comments) for several nodes"),
        g.add_argument("--num_nodes", "--num-nodes", type=positive_int, help="how many of the hostfile's nodes to use"),
        g.add_argument("--master_addr", "--master-addr", help="address of node 0 (multi-node)"),
        g.add_argument("--master_port", "--master-port", type=port, default=29500, help="1 to 65535 (default 29500)"),
        g.add_argument("--patch", choices=PATCH_MODES, default="auto", dest="patch_mode",
                       help="how workers get the port: disk (the installed files are patched), memory (an import "
                            "hook rewrites on import, no file touched), off; auto: disk if patched, else memory"),
        g.add_argument("--bind-cores", action="store_true",
                       help="CPU workers: pin each worker to its own cores on its node, as many as its threads "
                            "(OMP_NUM_THREADS if set, else the cores porter may use // N), worker i on the i-th "
                            "such slice; OMP_NUM_THREADS=1 --bind-cores gives one core and one thread per worker. "
                            "Default: the workers share every core, each with cores // N threads"),
        g.add_argument("--dry-run", action="store_true", help="print the launch command and environment, run nothing"),
    ]
    return {flag: action.nargs != 0 for action in actions for flag in action.option_strings}


def recipe_argv(argv: list[str], launch_flags: dict[str, bool]) -> list[str]:
    """The recipe's own arguments: ``argv`` without porter's launch options (and their values), by exact flag (a
    recipe's parser takes no abbreviations)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag, inline = argv[i].split("=", 1)[0], "=" in argv[i]
        if flag in launch_flags:
            i += 2 if launch_flags[flag] and not inline else 1
            continue
        out.append(argv[i])
        i += 1
    return out


@dataclass
class LaunchPlan:
    command: list[str]
    env: dict[str, str]
    device: str
    workers: int
    patch_mode: str
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.command)}"


def resolve_device(name: str):
    from .runtime import device

    classes = device.known()
    if name == "auto":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                chosen = type(device.select())
            except (ValueError, RuntimeError) as exc:  # a bad PORTER_DEVICE in the environment
                raise PorterError(str(exc), hint="unset PORTER_DEVICE or pass --device") from None
        device.reset()
        return chosen, [str(w.message) for w in caught]
    return classes[name], []


def _host(cls) -> bool:
    """A device that is the host's CPU (the built-in one, or a plugin's subclass of it): its workers are processes
    on cores, asked of the class, not of its name."""
    from .runtime.device import CPU

    return issubclass(cls, CPU)


def device_count(cls) -> int | None:
    if not cls.is_present():
        return None
    if _host(cls):
        return usable_cores()
    return cls().device_count()


def decide_patch_mode(requested: str, recipe: Recipe, registry, notes: list[str], dry_run: bool = False) -> str:
    from .state import PATCHED, status
    from .target import locate

    if not recipe.targets or requested == "off":
        return "off"
    states = {}
    for name in recipe.targets:
        states[name] = status(locate(registry.target(name))).state
    if requested == "auto":
        requested = "disk" if all(s == PATCHED for s in states.values()) else "memory"
    if requested == "disk":
        unpatched = [n for n, s in states.items() if s != PATCHED]
        if unpatched:
            raise PorterError(f"--patch disk, but {', '.join(unpatched)} is not patched on disk "
                              f"({', '.join(states[n] for n in unpatched)})",
                              hint=f"run `porter patch {unpatched[0]}` first, or use --patch memory")
    if requested == "memory" and not dry_run:
        from . import memory

        for name in recipe.targets:
            if states[name] not in ("clean",):
                raise PorterError(f"--patch memory needs the installed {name} unpatched, but it is {states[name]}",
                                  hint=f"use --patch disk, or `porter revert {name}`")
            # the same cache key the workers use, so each of them finds this plan without loading the rules
            prepared = memory.prepare_for(registry, name)
            notes.append(f"{name}: {len(prepared.sources)} modules rewritten in memory"
                         + (f"; data files not rewritten: {', '.join(prepared.skipped)}" if prepared.skipped else ""))
    return requested


def port_here(recipe: Recipe, registry) -> str:
    """A recipe that runs in this process (no launcher) gets its targets' port as workers do: the files as patched
    on disk, or the import hook serving the port from memory, installed before the recipe imports a target."""
    mode = decide_patch_mode("auto", recipe, registry, [])
    if mode == "memory":
        from . import memory

        for name in recipe.targets:
            try:
                memory.install(memory.prepare_for(registry, name))
            except RuntimeError as exc:  # the target was imported before: this process cannot port it any more
                raise PorterError(f"{name}: {exc}", hint=f"run `porter patch {name}` to port it on disk") from None
    return mode


# DeepSpeed's runner reads a hostfile line with this pattern (re.search, so anything after the count is ignored),
# after skipping empty lines and lines starting with "#" (deepspeed/launcher/runner.py, _parse_hostfile)
HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")


def read_hostfile(path: str) -> dict[str, int]:
    """The hosts and slot counts of a DeepSpeed hostfile, read as DeepSpeed's runner reads it, or an InputError
    (exit 7) naming the file and the line. DeepSpeed itself carries on without a missing hostfile (a warning, then
    one local node) and raises a traceback for a bad line, after the parent has handed over."""
    from .diskio import regular_file_problem

    problem = regular_file_problem(path, "a hostfile")
    if problem:
        raise InputError(f"--hostfile {path}: {problem}")
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)  # a hostfile is a line per node: a megabyte is not one
    except OSError as exc:
        raise InputError(f"--hostfile {path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--hostfile {path}: not a text file") from None
    hosts: dict[str, int] = collections.OrderedDict()
    form = "expected 'HOSTNAME slots=N', a comment (#) or an empty line"
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = HOSTFILE_LINE.search(line)
        if not match:
            raise InputError(f"--hostfile {path}: line {number}: {line[:60]!r}: {form}")
        host, slots = match.group(1), int(match.group(2))
        if host in hosts:
            raise InputError(f"--hostfile {path}: line {number}: host {host!r} is listed twice")
        if slots < 1:
            raise InputError(f"--hostfile {path}: line {number}: {host} has slots={slots}: a node needs at least 1")
        hosts[host] = slots
    if not hosts:
        raise InputError(f"--hostfile {path}: no hosts in it ({form})")
    return hosts


def check_nodes(args: argparse.Namespace) -> int:
    """How many nodes the launch uses (exit 2 or 7 for node options that cannot work)."""
    if not args.hostfile:
        if args.num_nodes and args.num_nodes > 1:
            raise PorterError(f"--num_nodes {args.num_nodes} without --hostfile: DeepSpeed finds other nodes "
                              f"only in a hostfile", hint="pass --hostfile FILE listing the nodes",
                              exit_code=EXIT_USAGE)
        return 1
    hosts = read_hostfile(args.hostfile)
    if args.num_nodes and args.num_nodes > len(hosts):
        raise PorterError(f"--num_nodes {args.num_nodes}, but --hostfile {args.hostfile} lists {len(hosts)} "
                          f"host(s)", hint=f"use --num_nodes {len(hosts)} or fewer", exit_code=EXIT_USAGE)
    used = list(hosts.items())[: args.num_nodes or len(hosts)]
    short = [(h, n) for h, n in used if n < args.npus]
    if short:
        host, slots = short[0]
        # DeepSpeed would start --npus workers on each node whatever the hostfile says it has
        raise PorterError(f"--npus {args.npus}, but --hostfile {args.hostfile} gives {host} slots={slots}",
                          hint=f"use --npus {min(n for _, n in used)} or fewer, or correct the hostfile",
                          exit_code=EXIT_USAGE)
    return len(used)


def plan_launch(args: argparse.Namespace, recipe: Recipe, recipe_argv: list[str], registry) -> LaunchPlan:
    cls, notes = resolve_device(args.device)
    # the recipe's checks here may import SAT and with it DeepSpeed: it is told the device, not left to guess (and
    # warn that it found no GPU)
    os.environ.setdefault("DS_ACCELERATOR", cls.deepspeed_accelerator)
    present = device_count(cls)
    if present is None:
        if not args.dry_run:
            raise PorterError(f"--device {cls.name}: no {cls.name} device is usable on this machine",
                              hint="--device cpu runs the workers as CPU processes", exit_code=EXIT_USAGE)
        notes.append(f"no {cls.name} here: device count not checked (dry run)")
    elif args.npus > present and not args.hostfile:
        what = "CPU cores" if _host(cls) else f"{cls.name} devices"
        raise PorterError(f"--npus {args.npus}, but this machine has {present} {what}",
                          hint=f"use --npus {present} or fewer", exit_code=EXIT_USAGE)
    nodes = check_nodes(args)
    if recipe.preflight:
        # Here, before the port is prepared (minutes of planning on a cold cache) and for a dry run too, so that
        # a dry run answers whether the run would start. What the recipe may want to know of the launch:
        # where its workers run (None where the device is not here) and on how many nodes.
        args.launch_device = cls.name if present is not None else None
        args.launch_nodes = nodes
        recipe.preflight(args)
    patch_mode = decide_patch_mode(args.patch_mode, recipe, registry, notes, args.dry_run)

    worker_env = {"PORTER_DEVICE": cls.name, "PORTER_BACKEND": cls.backend, "DS_ACCELERATOR": cls.deepspeed_accelerator,
                  "PORTER_PATCH": patch_mode}
    if cls.visible_devices_env:
        # keep a selection the user already made (CUDA_VISIBLE_DEVICES=4,5), else the first N devices
        chosen = [d for d in os.environ.get(cls.visible_devices_env, "").split(",") if d.strip()]
        if chosen and len(chosen) < args.npus:
            raise PorterError(f"--npus {args.npus}, but {cls.visible_devices_env}={','.join(chosen)} lists "
                              f"{len(chosen)} device(s)")
        worker_env[cls.visible_devices_env] = ",".join(chosen[: args.npus] or [str(i) for i in range(args.npus)])
    if _host(cls):
        worker_env.update(cpu_worker_env(args.npus, getattr(args, "bind_cores", False)))
    elif getattr(args, "bind_cores", False):
        raise PorterError(f"--bind-cores pins CPU workers, but the workers run on {cls.name}",
                          hint="leave --bind-cores out, or use --device cpu", exit_code=EXIT_USAGE)
    command = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.npus),
               "--master_port", str(args.master_port), "--no_local_rank", *_quiet_launcher()]
    if args.hostfile:
        command += ["--hostfile", args.hostfile]
        if args.num_nodes:
            command += ["--num_nodes", str(args.num_nodes)]
        if args.master_addr:
            command += ["--master_addr", args.master_addr]
    else:
        command += ["--num_nodes", "1"]
    worker = ["--module", "porter.worker"]
    for key, value in sorted(worker_env.items()):
        worker += ["--porter-env", f"{key}={value}"]
    command += worker + [recipe.model, recipe.name, *recipe_argv]
    # the launcher itself must pick the same accelerator to count and bind devices
    env = {"DS_ACCELERATOR": cls.deepspeed_accelerator, **({cls.visible_devices_env: worker_env[cls.visible_devices_env]}
                                                            if cls.visible_devices_env else {})}
    if _host(cls):
        env.update(malloc_env())
    notes.append(f"{args.npus} {cls.name} worker(s) per node, process group {cls.backend}, port applied: {patch_mode}")
    return LaunchPlan(command, env, cls.name, args.npus, patch_mode, notes)


BIND_ENV = "PORTER_BIND_CORES"  # set for bound CPU workers: how many workers share the node's cores

# glibc malloc's settings for CPU training workers (environment variables glibc reads at start-up). By default
# glibc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB as blocks are freed) with
# its own mmap and gives it back at free(), and returns the heap's free top to the kernel past 128 KiB. A training
# step allocates and frees the same activation, gradient and communication buffers every step, so each step maps
# fresh pages and the kernel faults every one of them in again: on the tiny preset, one worker with one thread
# took 2.3 million minor faults in a 20-step run (0.4 million with these settings, none in steady steps) and its
# steps ran about 2x slower. The two thresholds serve those blocks from the heap and keep freed memory for the
# next step. The arena limit puts every thread on that one heap: another thread's arena is made of 64 MiB heaps,
# and a bigger block there (gloo's threads receive whole gradient buckets) is mmapped and faulted in afresh each
# step whatever the thresholds say. Measured in benchmarks/bench_train_syscpu.py. The cost: up to 1 GiB of freed
# memory per worker stays with it instead of going back to the system, and threads share one arena's lock (a
# worker's threads allocate little: torch's intra-op threads work in buffers the main thread allocated). A value
# the user set wins.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_ARENA_MAX": "1"}


def malloc_env() -> dict[str, str]:
    """:data:`MALLOC_ENV`, less what the user already decided (either variable, or glibc's malloc tunables). It goes
    into the launcher's own environment, not a worker's --porter-env: glibc reads it when a process starts, so
    only a process started with it is affected (DeepSpeed's launcher passes its environment to the workers it
    starts on this node; workers on other nodes of a hostfile keep glibc's defaults)."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(k in os.environ for k in MALLOC_ENV):
        return {}
    return dict(MALLOC_ENV)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, a cgroup cpuset), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def cpu_worker_env(workers: int, bind: bool) -> dict[str, str]:
    """What each of ``workers`` CPU workers per node is told: its thread count (an OMP_NUM_THREADS the user set,
    else an even share of the usable cores, so N workers do not oversubscribe them), and with ``bind`` the number
    of workers that split the cores (:func:`bind_this_worker`)."""
    threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not threads.isdigit() or int(threads) < 1:
        threads = str(max(1, usable_cores() // workers))
    env = {"OMP_NUM_THREADS": threads}
    if bind:
        if workers * int(threads) > usable_cores():
            raise PorterError(f"--bind-cores: {workers} worker(s) x {threads} thread(s) need "
                              f"{workers * int(threads)} cores, but porter may use {usable_cores()} here",
                              hint="lower --npus or OMP_NUM_THREADS", exit_code=EXIT_USAGE)
        env[BIND_ENV] = str(workers)
    return env


def bind_this_worker(env: dict[str, str]) -> list[int] | None:
    """Pin this process (and every thread it starts later) to its own cores: the sorted cores it may use, cut into
    slices of OMP_NUM_THREADS, the slice numbered by DeepSpeed's LOCAL_RANK. ``env`` is what the parent decided
    (porter.worker's --porter-env, which calls this first); None where it asked for no binding. Checked here as well as in the parent,
    since on another node of a hostfile the cores are that node's."""
    workers = int(env.get(BIND_ENV) or 0)
    if not workers:
        return None
    threads = int(env.get("OMP_NUM_THREADS") or 1)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    cores = sorted(os.sched_getaffinity(0))
    if workers * threads > len(cores):
        raise PorterError(f"--bind-cores: {workers} worker(s) x {threads} thread(s) need {workers * threads} "
                          f"cores, but this node lets porter use {len(cores)}", exit_code=EXIT_USAGE)
    mine = cores[rank * threads:(rank + 1) * threads]
    os.sched_setaffinity(0, mine)
    return mine


def _quiet_launcher() -> list[str]:
    """DeepSpeed's launcher logs its own start-up at INFO and WARNING (no hostfile, the world info, a
    CUDA_VISIBLE_DEVICES line even for CPU workers) between porter's lines, which already say what is launched;
    errors still show. Its --log_level option exists from DeepSpeed 0.17.6 on."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import InvalidVersion, Version

    try:
        return ["--log_level", "error"] if Version(version("deepspeed")) >= Version("0.17.6") else []
    except (PackageNotFoundError, InvalidVersion):
        return []


def free_memory_per_worker(device: str, workers: int) -> tuple[int, str] | None:
    """(bytes free for each of ``workers`` workers on one node, the words saying so), or None where porter cannot
    tell without starting the device in this process (which would hold memory on it for the whole run)."""
    if device == "cpu":
        import psutil  # type: ignore[import-untyped]  # DeepSpeed's dependency; no stubs

        available = psutil.virtual_memory().available
        return available // workers, f"this machine has {_size(available)} free for {workers} worker(s)"
    if device == "cuda":
        import shutil

        smi = shutil.which("nvidia-smi")
        if not smi:
            return None
        try:
            out = subprocess.run([smi, "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
            free = {int(i): int(m) * 2 ** 20 for i, m in (line.split(",") for line in out.strip().splitlines())}
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        chosen = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if chosen and not all(d.isdigit() for d in chosen):  # UUIDs or MIG names: not worth guessing
            return None
        indexes = [int(d) for d in chosen][:workers] if chosen else sorted(free)[:workers]
        if not indexes or any(i not in free for i in indexes):
            return None
        least = min(free[i] for i in indexes)
        return least, f"the emptiest of GPU(s) {','.join(map(str, indexes))} has {_size(least)} free"
    return None


def _size(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


class LaunchFailed(PorterError):
    """The launcher exited with an error: its code, and the first error a worker reported."""


class _Output:
    """The workers' output on its way to the terminal: passed through as it comes, except tracebacks, porter's
    per-rank error lines and DeepSpeed's own exit notices, which are held back. They are what a failure is
    summed up from (one line), and they go to a log file on failure, or to the terminal after a run that ends
    well (nothing is lost). torch.distributed prefixes a rank's traceback lines with "[rankN]: ", which says
    whose it is."""

    SEPARATORS = ("During handling of the above exception", "The above exception was the direct cause")
    NOISE = re.compile(r"exits with return code = |Killing subprocess \d+|Main process received SIG")
    RANK = re.compile(r"\[rank(\d+)\]:\s?")
    WORKER_ERROR = re.compile(r"error \(rank (\d+)\): (.*)")  # porter.worker's one line for a PorterError

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: list[str] = []
        self.recent: collections.deque[str] = collections.deque(maxlen=4000)  # all output, for the log file
        self.errors: list[list] = []  # [rank or None, error line, hint or None], in the order they came
        self._in_traceback: set[tuple[int, str | None]] = set()  # (stream, rank) now inside a traceback
        self._last_held_error = False

    def feed(self, stream_id: int, piece: str, out) -> None:
        """One line (ending in \\n or \\r, or a long unterminated piece) of one stream."""
        with self.lock:
            self.recent.append(piece)
            if self._hold(stream_id, piece.rstrip("\r\n")):
                self.held.append(piece)
                return
        out.write(piece)
        out.flush()

    def _hold(self, stream_id: int, line: str) -> bool:
        prefixed = self.RANK.match(line)
        rank = prefixed.group(1) if prefixed else None
        body = line[prefixed.end():] if prefixed else line
        key = (stream_id, rank)
        after_error, self._last_held_error = self._last_held_error, False
        if key in self._in_traceback:
            if body and not body[0].isspace() and not body.startswith("Traceback"):
                self._in_traceback.discard(key)  # the exception line ends the traceback
                self.errors.append([rank, body.strip(), None])
            return True
        if body.startswith("Traceback (most recent call last)"):
            self._in_traceback.add(key)
            return True
        if body.startswith(self.SEPARATORS) or self.NOISE.search(body):
            return True
        worker_error = self.WORKER_ERROR.match(body)
        if worker_error:
            self.errors.append([worker_error.group(1), worker_error.group(2), None])
            self._last_held_error = True
            return True
        if after_error and body.startswith("hint: "):
            self.errors[-1][2] = body[len("hint: "):]
            return True
        return False

    def culprit(self) -> tuple[str, str | None]:
        """The first error a worker reported, with its hint (the ranks stopped after it report the stop, not its
        cause); else the last line of output that is not DeepSpeed's exit notice."""
        if self.errors:
            rank, line, hint = self.errors[0]
            return f"{f'rank {rank}' if rank is not None else 'a worker'}: {line}", hint
        for piece in reversed(self.recent):
            line = piece.strip()
            if line and not self.NOISE.search(line):
                return f"its last line: {line[:300]}", None
        return "no output", None


def _pump(fd: int, stream_id: int, output: _Output, out) -> None:
    """Read ``fd`` to its end, feeding ``output`` a line at a time (a line ends in \\n, or in \\r for a progress
    line redrawn in place, so those pass at once)."""
    pending = ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: a pseudo-terminal's other side is closed
            chunk = b""
        if not chunk:
            break
        pending += decoder.decode(chunk)
        while True:
            ends = [i for i in (pending.find("\n"), pending.find("\r")) if i >= 0]
            if not ends:
                break
            cut = min(ends) + 1
            output.feed(stream_id, pending[:cut], out)
            pending = pending[cut:]
        if len(pending) > 8192:  # no line end in sight: pass it on rather than hold it
            output.feed(stream_id, pending, out)
            pending = ""
    pending += decoder.decode(b"", final=True)
    if pending:
        output.feed(stream_id, pending, out)


def launch(plan: LaunchPlan) -> int:
    """Run the launcher, its output passed through (see :class:`_Output`); 0, or :class:`LaunchFailed` with the
    launcher's exit code as porter's, summed up in one line."""
    env = {**os.environ, **plan.env}
    output = _Output()
    # rank 0 draws its progress line in place only on a terminal: give the workers one where porter has one
    master = slave = None
    if hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        import pty
        import tty

        master, slave = pty.openpty()
        tty.setraw(slave)  # no \n -> \r\n translation: the bytes arrive as written
    proc = subprocess.Popen(plan.command, env=env, stdout=subprocess.PIPE,
                            stderr=slave if slave is not None else subprocess.PIPE)
    if slave is not None:
        os.close(slave)  # the workers hold it now; the master reads EIO once the last of them closes it
    assert proc.stdout is not None  # asked for: a pipe
    if master is not None:
        err_fd = master
    else:
        assert proc.stderr is not None
        err_fd = proc.stderr.fileno()
    pumps = [threading.Thread(target=_pump, args=(proc.stdout.fileno(), 1, output, sys.stdout), daemon=True),
             threading.Thread(target=_pump, args=(err_fd, 2, output, sys.stderr), daemon=True)]
    for t in pumps:
        t.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the launcher got the SIGINT too and is stopping its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
        if master is not None:
            os.close(master)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    if code == 0:
        if output.held:
            sys.stderr.write("".join(output.held))
        return 0
    what, hint = output.culprit()
    log = _write_log(output)
    exit_code = code if 0 < code < 256 else 128 + -code if code < 0 else 1
    raise LaunchFailed(f"the run failed: DeepSpeed's launcher exited {code}; {what}",
                       hint=(hint + "; " if hint else "") + (f"the workers' full output: {log}" if log else ""),
                       exit_code=exit_code)


def _write_log(output: _Output) -> str | None:
    """The output kept (tracebacks included) in a file named in the error's hint; None if it cannot be written."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix="porter-run-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(output.recent))
        return name
    except OSError:
        return None

