"""Training killed mid-run (SIGKILL to the launcher and its workers) resumes with --resume from its last
checkpoint: the step count continues, and so do the data and the loss."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest


def steps_logged(save) -> int:
    path = save / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return len([line for line in lines if line.endswith("}")])


@pytest.mark.slow
def test_a_killed_run_resumes_where_its_checkpoint_left_off(tmp_path):
    save = tmp_path / "run"
    argv = [sys.executable, "-m", "porter.cli", "run", "visualglm", "train", "--npus", "1", "--device", "cpu",
            "--iters", "24", "--lr", "3e-3", "--save-interval", "8", "--log-interval", "1",
            "--pad-to", "longest", "--max_target_length", "32", "--save", str(save), "--patch", "memory"]
    env = {**os.environ, "PORTER_DEVICE": "cpu"}
    # 8 samples a step as 2 micro-batches of 4; the resumed run reads them as one batch of 8
    proc = subprocess.Popen([*argv, "--batch-size", "4", "--grad-accum", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not (list((save / "checkpoints").glob("*/16/mp_rank_00_model_states.pt")) and steps_logged(save) >= 18):
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step 16 in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines() if line.strip()]
    killed_at = before[-1]["step"]
    assert 18 <= killed_at < 24

    r = subprocess.run([*argv, "--batch-size", "8", "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines() if line.strip()]
    resumed = rows[len(before):]
    assert [row["step"] for row in resumed] == list(range(17, 25))  # from the step-16 checkpoint on
    loss_at = {row["step"]: row["loss"] for row in before}
    # the same samples as the killed run read at each step it got to: the shuffled epochs resume where the
    # step-16 checkpoint left them, though the batch is now one of 8 instead of two of 4
    tokens_at = {row["step"]: row["tokens"] for row in before}
    overlap = [row["tokens"] for row in resumed if row["step"] <= killed_at]
    assert overlap == [tokens_at[step] for step in range(17, killed_at + 1)]
    assert overlap != [tokens_at[step] for step in range(1, len(overlap) + 1)]  # what starting over would read
    # the same weights and data as the killed run at step 17 (SAT restores no optimizer state, and none is used
    # before that step's forward): the same loss, far below a fresh start's
    assert abs(resumed[0]["loss"] - loss_at[17]) < 0.02 * loss_at[17]
    assert resumed[0]["loss"] < loss_at[1] - 1.0
    latest = list((save / "checkpoints").glob("*/latest"))
    assert len(latest) == 1 and latest[0].read_text().strip() == "24"
