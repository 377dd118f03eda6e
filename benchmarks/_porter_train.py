"""One `porter run visualglm train --mode performance` on CPU processes, measured the way the scaling, overhead and
system-time benchmarks all need it: steady-state samples/s and step time from the run's own metrics.jsonl, the CPU
time (user and system) of the whole process tree, its page faults and context switches, and where its workers were
allowed to run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the first steps pay for warm-up (the first forward, allocations the allocator keeps afterwards): left out
STEADY_FROM = 4


def steady(metrics: Path, skip: int = STEADY_FROM) -> dict:
    """samples/s (all workers' samples over the steps' time, not a mean of per-step rates) and mean step seconds,
    over the steps after the first ``skip - 1``."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    timed = [r for r in rows if r["step"] >= skip]
    if not timed:
        raise SystemExit(f"{metrics}: {len(rows)} step(s), none from step {skip} on")
    seconds = sum(r["seconds"] for r in timed)
    return {"samples_per_s": sum(r["samples"] for r in timed) / seconds, "step_s": seconds / len(timed),
            "steps": len(timed), "samples_per_step": timed[-1]["samples"]}


def _workers(root: int) -> list[int]:
    """Process ids of the porter.worker / porter.launch processes under ``root`` (the CLI -> DeepSpeed's runner ->
    its launch -> workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # a worker is `python -u -m porter.worker|porter.launch ...`; DeepSpeed's runner and launch name the
            # module after --module
            if any(a == b"-m" and b in (b"porter.worker", b"porter.launch") for a, b in zip(cmd, cmd[1:])):
                found.append(pid)
    return found


def _watch_affinity(root: int, seen: dict, stop: threading.Event) -> None:
    """Each worker's allowed cores and thread count, sampled every second until the run ends: the last sample
    stands (the thread count grows while DeepSpeed and gloo start up)."""
    while not stop.wait(1.0):
        for pid in _workers(root):
            try:
                status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                              if ":\t" in line)
            except OSError:
                continue
            seen[pid] = {"cpus_allowed": status.get("Cpus_allowed_list", "?").strip(),
                         "threads": int(status.get("Threads", "0"))}


def porter_train(processes: int, *, bind: bool = True, threads: int | None = 1, iters: int = 20,
                 env: dict[str, str] | None = None, extra: list[str] | None = None, prefix: list[str] | None = None,
                 ) -> dict:
    """Run the recipe once in a fresh temporary run folder; its steady figures, CPU times and worker placement.
    ``threads`` sets OMP_NUM_THREADS (None: porter's default); ``bind`` adds --bind-cores; ``env`` is added to the
    environment (a value None removes the variable); ``prefix`` goes before the command (strace, perf)."""
    full_env = {**os.environ, "PORTER_DEVICE": "cpu"}
    if threads is not None:
        full_env["OMP_NUM_THREADS"] = str(threads)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    with tempfile.TemporaryDirectory(prefix="porter-bench-") as tmp:
        save = Path(tmp) / "run"
        command = [*(prefix or []), sys.executable, "-m", "porter.cli", "run", "visualglm", "train",
                   "--mode", "performance", "--iters", str(iters), "--npus", str(processes), "--device", "cpu",
                   "--patch", "memory", "--save", str(save), *(["--bind-cores"] if bind else []), *(extra or [])]
        log = Path(tmp) / "output.log"
        with open(log, "w") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
            seen: dict = {}
            stop = threading.Event()
            watcher = threading.Thread(target=_watch_affinity, args=(proc.pid, seen, stop), daemon=True)
            watcher.start()
            # wait4: the CPU time, faults and switches of the CLI and every process it waited for (the launcher,
            # which waited for its workers)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            stop.set()
            watcher.join()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{processes} process(es) failed ({' '.join(command)}):\n{log.read_text()[-3000:]}")
        result = steady(save / "metrics.jsonl")
        result.update({"wall_s": wall, "user_s": usage.ru_utime, "system_s": usage.ru_stime,
                       "minor_faults": usage.ru_minflt, "voluntary_switches": usage.ru_nvcsw,
                       "involuntary_switches": usage.ru_nivcsw, "workers": sorted(seen.values(), key=str),
                       "output_tail": log.read_text()[-400:] if (prefix or []) else None})
        if result["output_tail"] is None:
            del result["output_tail"]
        return result


def machine() -> dict:
    return {"machine": f"{os.uname().machine}, {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable",
            "load_average_at_start": os.getloadavg()[0]}
