"""A server in a child process on a free localhost port, for tests and benchmarks: started, waited for, stopped."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO


class LocalServer:
    """``porter run visualglm serve --port 0 *args``; ``url`` once it answers /health. A context manager."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 120.0):
        self.args, self.timeout = [str(a) for a in args], timeout
        self.env = {**os.environ, "PORTER_DEVICE": "cpu", **(env or {})}
        self.url: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: list[str] = []

    def __enter__(self) -> LocalServer:
        command = [sys.executable, "-m", "porter.cli", "run", "visualglm", "serve", "--port", "0", *self.args]
        proc = self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env=self.env)
        assert proc.stdout is not None and proc.stderr is not None  # both were asked for as pipes just above
        threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + self.timeout
        line = proc.stdout.readline()  # "serving NAME on http://HOST:PORT ..." once the model is loaded
        found = re.search(r"http://\S+:\d+", line)
        if not found:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the server did not start: {line!r}\n{''.join(self.stderr[-20:])}")
        self.url = found.group(0)
        while time.monotonic() < deadline:
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the server at {self.url} did not answer /health within {self.timeout:g} s")

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
            return json.loads(response.read())

    def rss_bytes(self) -> int:
        """The server process's resident memory (Linux)."""
        if self.proc is None:
            raise RuntimeError("the server is not started: use LocalServer as a context manager")
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
