"""The whole SAT port on a copy of the real installed SAT 0.4.12: diff, verify, training, imports, NPU dispatch."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.testing import run_porter, tree_digest

OLD_RECIPE_FILES = {"sat/model/official/chatglm_model.py", "sat/model/official/glm130B_model.py",
                    "sat/model/position_embedding/rotary_embeddings.py"}
ENV = {"PORTER_DEVICE": "cpu"}


def test_dry_run_covers_the_old_recipe_and_the_device_sites(sat_site, tmp_path):
    report = tmp_path / "plan.json"
    r = run_porter("patch", "sat", "--dry-run", "--report", str(report), "--site-packages", str(sat_site))
    assert r.returncode == 0, r.stderr
    plan = json.loads(report.read_text())
    changed = {f["path"] for f in plan["files"] if f["changed"]}
    assert OLD_RECIPE_FILES <= changed
    assert {"sat/arguments.py", "sat/training/utils.py", "sat/training/model_io.py", "sat/mpu/data.py"} <= changed
    assert all(n > 0 for n in plan["rules"].values()), plan["rules"]
    lines = {(m["path"], m["lines"][0]) for m in plan["matches"]}
    # sites from the survey of 0.4.12, reported at their installed line numbers
    assert {("sat/training/utils.py", 82), ("sat/training/utils.py", 89), ("sat/training/model_io.py", 207),
            ("sat/mpu/data.py", 49), ("sat/arguments.py", 188)} <= lines


def test_patch_verify_passes_every_stage_and_revert_restores_every_byte(sat_site):
    before = tree_digest(sat_site)
    r = run_porter("patch", "sat", "--site-packages", str(sat_site), env=ENV)
    assert r.returncode == 0, r.stderr
    r = run_porter("verify", "sat", "--json", "--site-packages", str(sat_site), env=ENV)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"], [x for x in report["results"] if x["status"] != "ok"]
    stages = {x["stage"] for x in report["results"]}
    assert stages == {"journal", "compile", "import", "fixpoint", "parity-ops", "parity-model", "smoke"}
    model = {x["item"]: x for x in report["results"] if x["stage"] == "parity-model"}
    assert set(model) == {"tiny ChatGLM logits", "tiny ChatGLM gradients (28 tensors)",
                          "tiny ChatGLM loss curve (20 steps)"}
    r = run_porter("revert", "sat", "--site-packages", str(sat_site))
    assert r.returncode == 0, r.stderr
    assert tree_digest(sat_site) == before


def test_patched_and_original_tiny_chatglm_agree(sat_patched, tmp_path):
    """logits within 1e-5 (fp32) and the same 20-step loss curve within 1e-5 relative."""
    import torch
    from porter_sat.parity import compare_model_runs

    original = tmp_path / "original"
    original.mkdir()
    import shutil
    shutil.copytree(sat_patched / "sat", original / "sat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(sat_patched / ".porter-state/sat/originals/sat", original / "sat", dirs_exist_ok=True)
    runs = {}
    for label, site in (("original", original), ("patched", sat_patched)):
        out = tmp_path / f"{label}.pt"
        env = {**os.environ, **ENV, "PYTHONPATH": str(site)}
        proc = subprocess.run([sys.executable, "-m", "porter_sat.parity", "model", "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[label] = torch.load(out)
    rows = {row["what"].split(" (")[0]: row for row in compare_model_runs(runs["original"], runs["patched"])}
    assert rows["logits"]["max_abs_diff"] <= 1e-5
    assert rows["loss curve"]["max_rel_diff"] <= 1e-5 and len(runs["patched"]["losses"]) == 20
    assert rows["gradients"]["ok"]


def smoke(site: Path, save: Path, *, procs: int = 1, zero: int = 0, iters: int = 5) -> tuple[int, list[dict], str]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
                str(29500 + procs * 10 + zero)] if procs > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "porter_sat.smoke", "--iters", str(iters), "--save", str(save),
                           "--zero-stage", str(zero)], capture_output=True, text=True, env=env, timeout=600)
    results = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.replace("}PORTER", "}\nPORTER").splitlines()
               if line.startswith("PORTER-SMOKE ")]
    return proc.returncode, results, proc.stdout + proc.stderr


def test_unpatched_sat_cannot_train_on_cpu(sat_pristine, tmp_path):
    code, results, output = smoke(sat_pristine, tmp_path / "ckpt", iters=1)
    assert code != 0 and not results
    assert "LOCAL_RANK (default 0) and args.device inconsistent" in output


@pytest.mark.parametrize("procs, zero", [(1, 0), (1, 1), (2, 0), (2, 1)])
def test_patched_sat_fine_tunes_through_training_main(sat_patched, tmp_path, procs, zero):
    code, results, output = smoke(sat_patched, tmp_path / "ckpt", procs=procs, zero=zero)
    assert code == 0, output[-3000:]
    assert sorted(r["rank"] for r in results) == list(range(procs))
    for r in results:
        assert r["world_size"] == procs and len(r["losses"]) == 5 and r["finite"]
        assert r["zero_stage"] == zero
        assert r["optimizer"] == ("DeepSpeedZeroOptimizer" if zero else "AdamW")
    save = Path(results[0]["save"])
    assert (save / "latest").read_text().strip() == "5"
    assert (save / "5" / "mp_rank_00_model_states.pt").exists()
    import torch
    state = torch.load(save / "5" / "mp_rank_00_model_states.pt", weights_only=False)
    assert "module" in state and "cuda_rng_state" in state  # the device's RNG state, under SAT's key


BLOCKED_IMPORTS = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('triton', 'wandb'):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[1])
    import sat
    from sat.model.official.chatglm_model import ChatGLMModel
    from sat.training.deepspeed_training import training_main
    assert sat.__file__.startswith(sys.argv[1])
    print("imported")
""")


def test_import_sat_without_triton_and_wandb(sat_pristine, sat_patched):
    def attempt(site):
        return subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS, str(site)], capture_output=True, text=True,
                              env={**os.environ, **ENV}, timeout=300)

    r = attempt(sat_pristine)
    assert r.returncode != 0 and "No module named 'triton'" in r.stderr
    r = attempt(sat_patched)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-2000:]


def test_rules_catalogue_documents_every_rule():
    r = run_porter("rules", "sat", "--json")
    rules = json.loads(r.stdout)
    assert len(rules) >= 20
    for rule in rules:
        assert all(rule[k] for k in ("why", "how", "upstream", "removal")), rule["id"]
    text = run_porter("rules", "sat").stdout
    assert text.count("  why:") == text.count("  removal:") == len(rules)


def test_scan_leaves_nothing_open_and_finds_what_the_rules_cover(sat_site):
    r = run_porter("scan", "sat", "--json", "--site-packages", str(sat_site))
    data = json.loads(r.stdout)
    assert data["open"] == [], data["open"]
    assert all(s["exempt"] for s in data["exempt"])
    # the same scan without rules finds the survey's sites (the scanner itself works)
    from porter.scan import find_sites
    source = (sat_site / "sat/training/utils.py").read_text()
    found = {(s.line, s.kind) for s in find_sites("sat/training/utils.py", source)}
    assert {(82, "torch.cuda"), (89, "torch.cuda"), (141, "torch.cuda")} <= found
    args_src = (sat_site / "sat/arguments.py").read_text()
    kinds = {(s.line, s.kind) for s in find_sites("sat/arguments.py", args_src)}
    assert (188, "backend string") in kinds and (574, "cudnn flag") in kinds


def test_op_parity_never_compares_a_patched_file_with_itself(tmp_path):
    """A patched file whose saved original is gone is an error; a file the patch left alone is its own original
    (the release has no code for that rule)."""
    from porter_sat.parity import load_original

    originals = tmp_path / "originals"
    originals.mkdir()
    patched = {"sat/transformer_defaults.py"}
    with pytest.raises(FileNotFoundError, match="saved original of a patched file is missing"):
        load_original(originals, "sat/transformer_defaults.py", "porter_test_missing_original", patched=patched)
    untouched = load_original(originals, "sat/mpu/utils.py", "porter_test_untouched", patched=patched)
    assert untouched.__file__.endswith("sat/mpu/utils.py")
