"""Starting a recipe on N devices per node through DeepSpeed's launcher (multi-node through its hostfile).

The parent decides everything once (device, process-group backend, visible devices, how the port is
applied) and hands it to each worker on its command line, so the same settings reach remote nodes whatever
launcher DeepSpeed uses there.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

from .errors import EXIT_USAGE, PorterError
from .recipes import Recipe, positive_int

PATCH_MODES = ("auto", "disk", "memory", "off")


def add_launch_arguments(p: argparse.ArgumentParser) -> set[str]:
    """Add porter's launch options to a recipe's parser; returns their destinations (what workers never see)."""
    g = p.add_argument_group("launch (porter)")
    g.add_argument("--npus", type=positive_int, default=1, metavar="N",
                   help="workers per node: one per NPU / GPU, or N CPU processes with --device cpu (default 1)")
    g.add_argument("--device", choices=("auto", "npu", "cuda", "cpu"), default="auto",
                   help="auto: the first of npu, cuda, cpu present (with a warning when it is the CPU)")
    g.add_argument("--hostfile", help="DeepSpeed hostfile ('host slots=N' per line) for several nodes")
    g.add_argument("--num_nodes", "--num-nodes", type=positive_int, help="how many of the hostfile's nodes to use")
    g.add_argument("--master_addr", "--master-addr", help="address of node 0 (multi-node)")
    g.add_argument("--master_port", "--master-port", type=int, default=29500)
    g.add_argument("--patch", choices=PATCH_MODES, default="auto", dest="patch_mode",
                   help="how workers get the port: disk (the installed files are patched), memory (an import "
                        "hook rewrites on import, no file touched), off; auto: disk if patched, else memory")
    g.add_argument("--dry-run", action="store_true", help="print the launch command and environment, run nothing")
    return {action.dest for action in g._group_actions}


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


def device_count(cls) -> int | None:
    if not cls.is_present():
        return None
    if cls.name == "cpu":
        return os.cpu_count() or 1
    return cls().device_count()


def decide_patch_mode(requested: str, recipe: Recipe, registry, notes: list[str], dry_run: bool = False) -> str:
    from .patcher import PATCHED, status
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


def plan_launch(args: argparse.Namespace, recipe: Recipe, recipe_argv: list[str], registry) -> LaunchPlan:
    cls, notes = resolve_device(args.device)
    present = device_count(cls)
    if present is None:
        if not args.dry_run:
            raise PorterError(f"--device {cls.name}: no {cls.name} device is usable on this machine",
                              hint="--device cpu runs the workers as CPU processes", exit_code=EXIT_USAGE)
        notes.append(f"no {cls.name} here: device count not checked (dry run)")
    elif args.npus > present and not args.hostfile:
        what = "CPU cores" if cls.name == "cpu" else f"{cls.name} devices"
        raise PorterError(f"--npus {args.npus}, but this machine has {present} {what}",
                          hint=f"use --npus {present} or fewer", exit_code=EXIT_USAGE)
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
    if cls.name == "cpu":
        worker_env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS",
                                                       str(max(1, (os.cpu_count() or 1) // args.npus)))
    command = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.npus),
               "--master_port", str(args.master_port), "--no_local_rank"]
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
    notes.append(f"{args.npus} {cls.name} worker(s) per node, process group {cls.backend}, port applied: {patch_mode}")
    return LaunchPlan(command, env, cls.name, args.npus, patch_mode, notes)


def launch(plan: LaunchPlan) -> int:
    env = {**os.environ, **plan.env}
    proc = subprocess.run(plan.command, env=env)
    return proc.returncode
