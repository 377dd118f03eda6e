"""`porter run`: what goes wrong after the launch is one line too.

Every input a user can get wrong is refused in the parent before DeepSpeed starts: those cases (which were
here, run as subprocesses) are rows of ``test_census_run.py`` now, run in-process. What is left here: the
documented exit codes, and failures only a launched worker can meet, summed up by ``porter.launch.launch`` as
one line (the launcher's exit code and the first error a worker reported) instead of a wall of traceback.
"""
import sys
import textwrap

import pytest

from porter.launch import LaunchFailed, LaunchPlan, launch
from porter.testing import run_porter


def test_exit_codes_are_documented_in_help():
    r = run_porter("--help")
    assert "7  an input file cannot be used (data set, checkpoint, tokenizer, image" in r.stdout
    r = run_porter("run", "--help")
    assert r.returncode == 0 and "demo" in r.stdout and "check" in r.stdout


def test_train_help_says_how_images_are_checked():
    r = run_porter("run", "visualglm", "train", "--help")
    assert r.returncode == 0 and "a sample of 2000 drawn with --seed" in " ".join(r.stdout.split())


def fake_launcher(script: str) -> LaunchPlan:
    """A plan whose "launcher" is a Python one-off writing what DeepSpeed's launcher and its workers write."""
    return LaunchPlan([sys.executable, "-c", textwrap.dedent(script)], {}, "cpu", 2, "off")


def test_a_worker_error_is_one_line_with_the_launchers_code_and_the_output_is_kept(capfd):
    plan = fake_launcher(r"""
        import sys
        print("[INFO] [launch.py:245:main] process 1 spawned", flush=True)
        sys.stderr.write("[###.....] step 1/10  loss 9.1\r")
        sys.stderr.write("porter worker 1: sat patched in memory\n")
        sys.stderr.write("error (rank 1): data.json: record 3: image too large\nhint: --skip-bad skips it\n")
        sys.stderr.write("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"x.py\", line 1\n")
        sys.stderr.write("[rank0]: RuntimeError: Connection closed by peer\n")
        sys.stderr.write("[ERROR] [launch.py:259:sigkill_handler] ['python'] exits with return code = 7\n")
        sys.exit(7)
    """)
    with pytest.raises(LaunchFailed) as caught:
        launch(plan)
    err = caught.value
    # the first error is the cause; rank 0's broken connection came after, because rank 1 stopped
    assert err.exit_code == 7
    assert err.message == ("the run failed: DeepSpeed's launcher exited 7; rank 1: data.json: record 3: image too "
                           "large")
    assert err.hint.startswith("--skip-bad skips it; the workers' full output: ")
    out = capfd.readouterr()
    assert "step 1/10  loss 9.1\r" in out.err and "porter worker 1" in out.err and "spawned" in out.out
    assert "Traceback" not in out.err and "error (rank" not in out.err and "exits with return code" not in out.err
    log = open(err.hint.rsplit(": ", 1)[1]).read()
    assert "[rank0]: Traceback (most recent call last):" in log and "error (rank 1)" in log


def test_a_traceback_is_summed_up_by_its_last_line_and_rank():
    plan = fake_launcher(r"""
        import sys
        sys.stderr.write("[rank3]: Traceback (most recent call last):\n[rank3]:   File \"sat.py\", line 9\n")
        sys.stderr.write("[rank3]:     raise ValueError(\"LOCAL_RANK and args.device inconsistent\")\n")
        sys.stderr.write("[rank3]: ValueError: LOCAL_RANK and args.device inconsistent\n")
        sys.exit(1)
    """)
    with pytest.raises(LaunchFailed) as caught:
        launch(plan)
    assert caught.value.exit_code == 1
    assert caught.value.message.endswith("exited 1; rank 3: ValueError: LOCAL_RANK and args.device inconsistent")


def test_a_launcher_killed_by_a_signal_and_silent():
    plan = fake_launcher("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(LaunchFailed) as caught:
        launch(plan)
    assert caught.value.exit_code == 137 and caught.value.message.endswith("exited -9; no output")


def test_a_run_that_ends_well_loses_nothing_it_held_back(capfd):
    plan = fake_launcher(r"""
        import sys
        sys.stderr.write("Traceback (most recent call last):\n  File \"t.py\", line 1\nKeyError: 'handled'\n")
        sys.stderr.write("still going\n")
    """)
    assert launch(plan) == 0
    err = capfd.readouterr().err
    assert err.index("still going") < err.index("Traceback") and "KeyError: 'handled'" in err


@pytest.mark.slow
def test_a_worker_that_fails_after_a_real_launch_is_one_line(tmp_path):
    """DeepSpeed's launcher for real: unpatched SAT refuses to train on the CPU inside the worker (a failure no
    parent check can see, SAT's own), and porter says so in one line."""
    from census import assert_refused

    status = run_porter("status", "sat")
    if "clean" not in status.stdout:
        pytest.skip(f"SAT is not unpatched here: {status.stdout.strip()}")
    save = tmp_path / "run"
    r = run_porter("run", "visualglm", "train", "--device", "cpu", "--patch", "off", "--iters", "1",
                   "--save", str(save), env={"PORTER_DEVICE": "cpu"}, timeout=300)
    assert_refused(r, 1, "error: the run failed: DeepSpeed's launcher exited 1; rank 0: ValueError: LOCAL_RANK",
                   "hint: the workers' full output: ")


def test_free_gpu_memory_is_read_from_nvidia_smi_without_starting_cuda_here(tmp_path, monkeypatch):
    """The parent must not create a CUDA context (it would hold memory on device 0 for the whole run): the batch
    size check reads nvidia-smi, the devices the workers will get, and gives up where it cannot tell."""
    from porter.launch import free_memory_per_worker

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, 81000\\n1, 500\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert free_memory_per_worker("cuda", 1) == (81000 * 2 ** 20, "the emptiest of GPU(s) 0 has 79.1 GiB free")
    assert free_memory_per_worker("cuda", 2)[0] == 500 * 2 ** 20  # the emptier of the two bounds each worker
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert free_memory_per_worker("cuda", 1)[0] == 500 * 2 ** 20
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8d2f0c4e")
    assert free_memory_per_worker("cuda", 1) is None
    assert free_memory_per_worker("npu", 8) is None
