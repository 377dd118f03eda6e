"""Fault injection for transaction tests: run the porter CLI with the patcher's step hook set.

    python tests/fault_runner.py --kill-at STEP -- patch toylib --site-packages DIR
    python tests/fault_runner.py --pause-at STEP -- revert toylib ...

--kill-at SIGKILLs the process at STEP (a name porter.patcher.step_hook receives, e.g. "journal-pending",
"wrote 2/3", "restored 1/3"); --pause-at prints "paused at STEP" to stderr and sleeps PORTER_FAULT_PAUSE seconds (default 60),
for a test that wants to act (kill, race) while the transaction is half done.
"""
import os
import signal
import sys
import time


def main() -> int:
    mode, step = sys.argv[1], sys.argv[2]
    assert mode in ("--kill-at", "--pause-at") and sys.argv[3] == "--", sys.argv
    from porter import patcher
    from porter.cli import main as porter_main

    def hook(name: str) -> None:
        if name != step:
            return
        if mode == "--kill-at":
            os.kill(os.getpid(), signal.SIGKILL)
        print(f"paused at {name}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("PORTER_FAULT_PAUSE", "60")))

    patcher.step_hook = hook
    # Ctrl-C as a terminal sends it, whoever started this (a shell's background job inherits SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return porter_main(sys.argv[4:])


if __name__ == "__main__":
    sys.exit(main())
