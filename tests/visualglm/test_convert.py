"""`porter run visualglm convert`: SAT <-> Hugging Face, model-parallel merge and split, on stand-ins in each real
layout (porter_visualglm.standin_layouts, release.make_release_folder) and SAT's own partition arithmetic."""
import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from porter_visualglm import conversion as K
from porter_visualglm import convert as C
from porter_visualglm import layouts as L
from porter_visualglm.release import INV_FREQ, STALE_KEY, make_release_folder, tiny_release_config
from porter_visualglm.standin_layouts import hf_config, hf_keys, make_hf_folder, per_head_qkv, random_hf_weights

from porter.errors import PorterError
from porter.testing import run_porter

ENV = {"PORTER_DEVICE": "cpu", "SAT_LOGLEVEL": "WARNING"}


def convert(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    C.add_arguments(parser)
    assert C.run(parser.parse_args([str(a) for a in argv])) == 0


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = [p for p in folder.glob("*.index.json")]
    files = sorted(set(json.loads(index[0].read_text())["weight_map"].values())) if index else \
        [p.name for p in folder.glob("model.safetensors")] + [p.name for p in folder.glob("pytorch_model.bin")]
    out = {}
    for f in files:
        out.update(load_file(folder / f) if f.endswith(".safetensors") else torch.load(folder / f, weights_only=True))
    return out


def sat_tensors(folder: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    iteration = (folder / "latest").read_text().strip()
    return torch.load(folder / iteration / f"mp_rank_{rank:02d}_model_states.pt", weights_only=True)["module"]


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sat_release(tmp_path_factory):
    """A SAT folder in the release's layout (fp16, SAT 0.3's stale position table, the rotary buffer)."""
    return make_release_folder(tmp_path_factory.mktemp("sat") / "release", seed=5)


# -- round trips --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,shards,text_only", [("safetensors", 3, False), ("bin", 2, False),
                                                  ("safetensors", 1, True)])
def test_hf_to_sat_to_hf_gives_back_every_tensor_and_the_config(tmp_path, fmt, shards, text_only):
    src = make_hf_folder(tmp_path / "hf", shards=shards, fmt=fmt, text_only=text_only, seed=1)
    convert(src, tmp_path / "sat")
    assert sorted(p.name for p in (tmp_path / "sat").iterdir()) == ["1", "latest", "model_config.json"]
    sat = sat_tensors(tmp_path / "sat")
    assert not any("inv_freq" in k for k in sat)  # SAT computes its rotary table
    assert ("mixins.eva.model.glm_proj.weight" in sat) != text_only and "mixins.chatglm-final.lm_head.weight" in sat
    config = json.loads((tmp_path / "sat" / "model_config.json").read_text())
    assert config["model_class"] == ("ChatGLMModel" if text_only else "VisualGLMModel")
    convert(tmp_path / "sat", tmp_path / "back", "--format", fmt, "--shard-size", "12MB")
    assert same(hf_tensors(src), hf_tensors(tmp_path / "back"))
    assert json.loads((src / "config.json").read_text()) == json.loads((tmp_path / "back" / "config.json").read_text())
    back = sorted(p.name for p in (tmp_path / "back").iterdir())
    assert "README.md" in back and ("config.json" in back)
    if not text_only:  # 12 MB shards: more than one file, with the index save_pretrained writes
        assert any(n.endswith(".index.json") for n in back)


def test_sat_to_hf_to_sat_gives_back_every_tensor_the_loaders_read_and_the_config(sat_release, tmp_path):
    convert(sat_release, tmp_path / "hf", "--to", "hf")
    hf = hf_tensors(tmp_path / "hf")
    assert set(hf) == set(hf_keys(json.loads((tmp_path / "hf" / "config.json").read_text())))
    convert(tmp_path / "hf", tmp_path / "sat")
    original = {k: v for k, v in sat_tensors(sat_release).items() if k not in (STALE_KEY, INV_FREQ)}
    assert same(original, sat_tensors(tmp_path / "sat"))
    assert json.loads((sat_release / "model_config.json").read_text()) == \
        json.loads((tmp_path / "sat" / "model_config.json").read_text())


def test_the_converted_sat_folder_loads_and_check_passes(tmp_path):
    src = make_hf_folder(tmp_path / "hf", shards=2)
    r = run_porter("run", "visualglm", "convert", str(src), str(tmp_path / "sat"), env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == str(tmp_path / "sat")
    assert "HF " in r.stderr and "-> SAT" in r.stderr and "dropped 2 rotary inv_freq buffer(s)" in r.stderr
    r = run_porter("run", "visualglm", "check", "--from_pretrained", str(tmp_path / "sat"), "--chatglm_path",
                   str(tmp_path), env=ENV, timeout=120)
    assert "all 96 keys and shapes as model_config.json describes" in r.stdout, r.stdout + r.stderr[-2000:]


# -- query_key_value rows -----------------------------------------------------------------------------------------------
def coded_qkv(heads: int, d: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v weights ([heads*d, hidden] each) whose every row says what it is: 1000*part + 10*head + dim."""
    rows = [torch.full((heads * d, hidden), 0.0) for _ in range(3)]
    for p in range(3):
        for h in range(heads):
            for i in range(d):
                rows[p][h * d + i] = 1000 * p + 10 * h + i
    return tuple(rows)


def test_query_key_value_rows_sit_where_each_layouts_attention_reads_them(tmp_path):
    """HF's attention views the output as (..., heads, 3*d) and splits the last dim in q, k, v; SAT's splits the
    output in three blocks with its own split_tensor_along_last_dim, then by head. A row code read back through each
    layout's reading says which (part, head, dim) it holds."""
    from sat.mpu.utils import split_tensor_along_last_dim

    config = hf_config()
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    d = hidden // heads
    weights = random_hf_weights(config, dtype="fp32")
    q, k, v = coded_qkv(heads, d, hidden)
    weights["transformer.layers.1.attention.query_key_value.weight"] = per_head_qkv(q, k, v, heads)
    weights["transformer.layers.1.attention.query_key_value.bias"] = per_head_qkv(q[:, 0], k[:, 0], v[:, 0], heads)
    src = make_hf_folder(tmp_path / "hf", config, weights=weights)
    convert(src, tmp_path / "sat")
    sat = sat_tensors(tmp_path / "sat")
    for suffix in ("weight", "bias"):
        w = sat[f"transformer.layers.1.attention.query_key_value.{suffix}"]
        out = w if suffix == "bias" else w[:, 0]  # the layer's output for input e_0: each row's code
        for p, part in enumerate(split_tensor_along_last_dim(out, 3)):  # SAT: q, k, v blocks, then heads
            codes = part.reshape(heads, d)
            expected = torch.tensor([[1000 * p + 10 * h + i for i in range(d)] for h in range(heads)]).float()
            assert torch.equal(codes, expected), (suffix, p)
    # and back: HF's reading of the HF file the SAT folder converts to
    convert(tmp_path / "sat", tmp_path / "hf2")
    w = hf_tensors(tmp_path / "hf2")["transformer.layers.1.attention.query_key_value.weight"][:, 0]
    per_head = w.reshape(heads, 3 * d)
    for p, part in enumerate(per_head.split(d, dim=-1)):
        assert torch.equal(part, torch.tensor([[1000 * p + 10 * h + i for i in range(d)]
                                               for h in range(heads)]).float())
    # the image encoder's qkv is SAT's on both sides: moved, never reordered
    name = "vit.transformer.layers.0.attention.query_key_value.weight"
    assert torch.equal(weights["image_encoder." + name], sat["mixins.eva.model." + name])


def test_an_old_order_sat_file_is_refused_unless_its_order_is_named(tmp_path):
    """SAT 0.4.0 files have HF's per-head rows and the same shapes; their model_config.json has no pad_token_id."""
    config = tiny_release_config()
    del config["pad_token_id"]
    old = make_release_folder(tmp_path / "old", config, seed=2)
    with pytest.raises(PorterError, match="no pad_token_id") as caught:
        convert(old, tmp_path / "out", "--mp", "1")
    assert caught.value.exit_code == 7 and "--qkv-order per-head" in caught.value.hint
    assert not (tmp_path / "out").exists()
    convert(old, tmp_path / "out", "--mp", "1", "--qkv-order", "per-head")
    before, after = sat_tensors(old), sat_tensors(tmp_path / "out")
    name = "transformer.layers.0.attention.query_key_value.weight"
    assert torch.equal(after[name], L.reorder_qkv(before[name], config["num_attention_heads"], L.GROUPED))
    assert not torch.equal(after[name], before[name])
    assert json.loads((tmp_path / "out" / "model_config.json").read_text())["pad_token_id"] == 3  # now marked new


# -- model parallel ---------------------------------------------------------------------------------------------------
def test_mp_split_holds_sats_partitions_and_merging_gives_the_file_back(sat_release, tmp_path):
    """Each rank's tensors are what SAT's own Column/Row/VocabParallel layers' partition() cut from the model."""
    from porter_visualglm.checkpoint import load_model
    from sat.mpu.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    convert(sat_release, tmp_path / "mp2", "--mp", "2")
    config = json.loads((tmp_path / "mp2" / "model_config.json").read_text())
    assert config["model_parallel_size"] == 2 and config["eva_args"]["model_parallel_size"] == 2
    ranks = [sat_tensors(tmp_path / "mp2", r) for r in range(2)]
    model, _ = load_model(sat_release, dtype=torch.float16)
    checked = set()
    for prefix, module in model.named_modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)):
            parts = module.partition(2)
            weights, biases = parts if isinstance(parts, tuple) else (parts, [])
            for r in range(2):
                assert torch.equal(ranks[r][prefix + ".weight"], weights[r]), prefix
                checked.add(prefix + ".weight")
                if biases:
                    assert torch.equal(ranks[r][prefix + ".bias"], biases[r]), prefix
                    checked.add(prefix + ".bias")
    assert {"transformer.word_embeddings.weight", "mixins.chatglm-final.lm_head.weight",
            "transformer.layers.0.attention.query_key_value.weight",
            "mixins.eva.model.qformer.transformer.layers.0.cross_attention.key_value.weight",
            "mixins.eva.model.vit.transformer.layers.1.mlp.dense_4h_to_h.weight"} <= checked
    whole = {k: v for k, v in model.state_dict().items() if k not in checked and "inv_freq" not in k}
    for r in range(2):  # everything else (norms, row-parallel biases, embeddings under 1000 rows) on every rank
        for name, tensor in whole.items():
            assert torch.equal(ranks[r][name], tensor), name
    convert(tmp_path / "mp2", tmp_path / "mp1", "--mp", "1")
    original = {k: v for k, v in sat_tensors(sat_release).items() if k not in (STALE_KEY, INV_FREQ)}
    assert same(original, sat_tensors(tmp_path / "mp1"))
    assert json.loads((sat_release / "model_config.json").read_text()) == \
        json.loads((tmp_path / "mp1" / "model_config.json").read_text())


def test_porter_and_check_name_the_command_for_a_model_parallel_or_hf_folder(sat_release, tmp_path):
    from porter_visualglm.checkpoint import CheckpointError, load_model

    convert(sat_release, tmp_path / "mp2", "--mp", "2")
    with pytest.raises(CheckpointError) as caught:
        load_model(tmp_path / "mp2")
    assert f"porter run visualglm convert {tmp_path / 'mp2'} {tmp_path / 'mp2-mp1'} --mp 1" in caught.value.hint
    hf = make_hf_folder(tmp_path / "hf")
    r = run_porter("run", "visualglm", "check", "--from_pretrained", str(hf), env=ENV, timeout=120)
    assert r.returncode == 7, r.stderr[-2000:]
    assert "a Hugging Face checkpoint" in r.stderr
    assert f"porter run visualglm convert {hf} {tmp_path / 'hf-sat'}" in r.stderr


# -- what is refused, and what is left behind -------------------------------------------------------------------------
def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".porter-convert-" in p.name)


def test_bad_input_is_one_error_with_its_exit_code_and_nothing_written(sat_release, tmp_path):
    out = tmp_path / "out"
    cases = []
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "weights.bin").write_bytes(b"x")
    cases.append((tmp_path / "neither", (), 7, "neither a SAT checkpoint"))
    hf = make_hf_folder(tmp_path / "hf", shards=3)
    missing = shutil.copytree(hf, tmp_path / "missing")
    (missing / "model-00002-of-00003.safetensors").unlink()
    cases.append((missing, (), 7, "names 1 shard(s) not in the folder: 'model-00002-of-00003.safetensors'"))
    traversal = shutil.copytree(hf, tmp_path / "traversal")
    index = json.loads((traversal / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../hf/model-00001-of-00003.safetensors"
    (traversal / "model.safetensors.index.json").write_text(json.dumps(index))
    cases.append((traversal, (), 7, "which is not a file name in"))
    shapes = shutil.copytree(hf, tmp_path / "shapes")
    config = json.loads((shapes / "config.json").read_text())
    config["inner_hidden_size"] = 96
    (shapes / "config.json").write_text(json.dumps(config))
    cases.append((shapes, (), 7, "shape of transformer.layers.0.mlp.dense_h_to_4h.weight: file [128, 64], config "
                                 "[96, 64]"))
    cases.append((sat_release, ("--mp", "3"), 2, "num_attention_heads 4 does not divide by 3"))
    cases.append((hf, ("--to", "hf", "--mp", "2"), 2, "Hugging Face checkpoints have no model-parallel files"))
    for src, extra, code, words in cases:
        with pytest.raises(PorterError) as caught:
            convert(src, out, *extra)
        assert caught.value.exit_code == code and words in caught.value.message, (src, caught.value.message)
        assert "\n" not in caught.value.message
        assert not out.exists() and not leftovers(tmp_path)
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(PorterError, match="exists; convert writes a new folder") as caught:
        convert(hf, out)
    assert caught.value.exit_code == 8 and (out / "keep").read_text() == "mine" and os.listdir(out) == ["keep"]


def test_the_command_line_says_one_line_with_its_exit_code(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_porter("run", "visualglm", "convert", str(tmp_path / "empty"), str(tmp_path / "out"), env=ENV, timeout=60)
    assert r.returncode == 7 and "error: " in r.stderr and "neither a SAT checkpoint" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_nothing_behind(sat_release, tmp_path, monkeypatch):
    from porter_visualglm import tensorio

    written = []
    real = tensorio.write_file

    def fail_second(path, *a, **kw):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(K, "write_file", fail_second)
    with pytest.raises(PorterError, match="writing failed .No space left on device.; nothing was left behind") as e:
        convert(sat_release, tmp_path / "mp2", "--mp", "2")
    assert e.value.exit_code == 8 and written and not (tmp_path / "mp2").exists() and not leftovers(tmp_path)
    monkeypatch.setattr(K, "write_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        convert(sat_release, tmp_path / "hf", "--to", "hf")
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path)


def test_what_a_killed_conversion_left_is_named_not_removed(sat_release, tmp_path, capsys):
    killed = tmp_path / ".hf.porter-convert-999999999"  # no such process: SIGKILL gave no chance to clean up
    (killed / "1").mkdir(parents=True)
    convert(sat_release, tmp_path / "hf", "--to", "hf")
    assert f"note: {killed} is what an interrupted conversion to {tmp_path / 'hf'} left" in capsys.readouterr().err
    assert killed.is_dir() and (tmp_path / "hf" / "config.json").exists()


def test_dtype_casts_floating_weights_only(sat_release, tmp_path):
    convert(sat_release, tmp_path / "hf", "--to", "hf", "--dtype", "bf16")
    hf = hf_tensors(tmp_path / "hf")
    assert {t.dtype for k, t in hf.items() if "inv_freq" not in k} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    source = sat_tensors(sat_release)["transformer.layers.0.mlp.dense_h_to_4h.weight"]
    assert torch.equal(hf["transformer.layers.0.mlp.dense_h_to_4h.weight"], source.to(torch.bfloat16))


def test_p_tuning_prefixes_are_kept_and_said_so_and_have_no_place_in_hf(tmp_path, tiny_config, capsys):
    from porter_visualglm.checkpoint import load_model, save_model
    from porter_visualglm.model import build_model

    model = build_model(tiny_config, finetune="ptuning", pre_seq_len=4, seed=2)
    save_model(model, tiny_config, tmp_path / "pt", finetune="ptuning", pre_seq_len=4, tokenizer_type="porter-standin")
    convert(tmp_path / "pt", tmp_path / "out", "--merge-lora")
    assert "note: P-tuning prefixes kept as they are" in capsys.readouterr().err
    before = {k: v for k, v in sat_tensors(tmp_path / "pt").items() if "inv_freq" not in k}
    assert any("prefix" in k for k in before) and same(before, sat_tensors(tmp_path / "out"))
    loaded, ckpt = load_model(tmp_path / "out")
    assert ckpt.finetune == "ptuning"
    with pytest.raises(PorterError, match="a P-tuning fine-tune: SAT's prefixes have no place in HF's ChatGLM") as e:
        convert(tmp_path / "pt", tmp_path / "hf", "--to", "hf")
    assert e.value.exit_code == 2 and not (tmp_path / "hf").exists()


def test_malformed_sources_found_in_review_are_one_error_each(sat_release, tmp_path):
    hf = make_hf_folder(tmp_path / "hf", shards=2)
    cases = {}
    deep = shutil.copytree(hf, tmp_path / "deep")  # nesting that json's recursion cannot follow
    (deep / "config.json").write_text("[" * 100000 + "]" * 100000)
    cases[deep] = "config.json: not valid JSON"
    listed = shutil.copytree(hf, tmp_path / "listed")
    index = json.loads((listed / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = ["model-00001-of-00002.safetensors"]
    (listed / "model.safetensors.index.json").write_text(json.dumps(index))
    cases[listed] = "names ['model-00001-of-00002.safetensors'], which is not a file name"
    carried = shutil.copytree(hf, tmp_path / "carried")
    config = json.loads((carried / "config.json").read_text())
    config["sat_args"] = ["not", "an", "object"]
    (carried / "config.json").write_text(json.dumps(config))
    cases[carried] = "config.json: 'sat_args' is list: expected an object"
    ranks = tmp_path / "ranks"
    convert(sat_release, ranks, "--mp", "2")
    states = ranks / "1" / "mp_rank_01_model_states.pt"
    weights = torch.load(states, weights_only=True)
    name = "transformer.layers.0.attention.dense.weight"
    weights["module"][name] = weights["module"][name].float()
    torch.save(weights, states)
    cases[ranks] = f"{states}: {name} is torch.float32 [64, 32], mp_rank_00_model_states.pt holds torch.float16"
    for src, words in cases.items():
        with pytest.raises(PorterError) as caught:
            convert(src, tmp_path / "out", *(("--mp", "1") if src == ranks else ()))
        assert caught.value.exit_code == 7 and words in caught.value.message, caught.value.message
        assert "\n" not in caught.value.message and not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_a_full_disk_while_writing_sats_file_is_one_line_and_no_abort(sat_release, tmp_path):
    """torch's zip writer fails in C++ (no errno) and would finish the file again in its destructor: one line, exit
    8, nothing left. A file size limit stands in for the full disk."""
    import resource
    import subprocess
    import sys

    limit = 5_000_000  # bytes: the tiny model's file is about 17 MB; the plan cache and the like stay below

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    hf = make_hf_folder(tmp_path / "hf", shards=1)
    r = subprocess.run([sys.executable, "-m", "porter.cli", "run", "visualglm", "convert", str(hf),
                        str(tmp_path / "sat")], capture_output=True, text=True, timeout=120, preexec_fn=small_files,
                       env={**os.environ, **ENV})
    assert r.returncode == 8, r.stderr[-3000:]
    assert "writing failed" in r.stderr and "nothing was left behind" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "sat").exists() and not leftovers(tmp_path)


def test_sigterm_while_writing_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    config = hf_config({**tiny_release_config(), "hidden_size": 512, "num_attention_heads": 8,
                        "inner_hidden_size": 1024, "num_layers": 4}, text_only=True)
    hf = make_hf_folder(tmp_path / "hf", config, shards=1, text_only=True)  # about 290 MB: a few seconds to write
    proc = subprocess.Popen([sys.executable, "-m", "porter.cli", "run", "visualglm", "convert", str(hf),
                             str(tmp_path / "sat"), "--dtype", "fp32"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    deadline = time.monotonic() + 60
    while not any((p / "1").exists() for p in tmp_path.glob(".sat.porter-convert-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert not (tmp_path / "sat").exists() and not leftovers(tmp_path)


def test_lora_matrices_of_the_wrong_shape_are_refused_before_writing(tmp_path, tiny_config):
    from porter_visualglm.checkpoint import save_model
    from porter_visualglm.model import build_model

    model = build_model(tiny_config, finetune="lora", lora_rank=4, seed=2)
    folder = save_model(model, tiny_config, tmp_path / "lora", finetune="lora", lora_rank=4,
                        tokenizer_type="porter-standin")
    states = folder / "1" / "mp_rank_00_model_states.pt"
    weights = torch.load(states, weights_only=True)
    name = "transformer.layers.1.attention.query_key_value.matrix_B.2"
    weights["module"][name] = torch.zeros(64, 5)  # a rank-5 B beside rank-4 A's: the matmul would fail mid-write
    torch.save(weights, states)
    with pytest.raises(PorterError) as caught:
        convert(folder, tmp_path / "out", "--merge-lora")
    assert caught.value.exit_code == 7 and "matrix_B.2 is [64, 5], not [64, 4]" in caught.value.message
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_the_loader_reads_model_config_through_the_same_json_check(sat_release, tmp_path):
    from porter_visualglm.checkpoint import CheckpointError, inspect_checkpoint

    deep = shutil.copytree(sat_release, tmp_path / "deep")
    (deep / "model_config.json").write_text("[" * 100000 + "]" * 100000)  # was a RecursionError traceback
    with pytest.raises(CheckpointError, match=r"model_config.json: not valid JSON"):
        inspect_checkpoint(deep)


def test_the_hf_config_written_has_the_released_files_fields(sat_release, tmp_path):
    """The stand-in's config.json is written from the released files' fields (standin_layouts), not from layouts.py:
    the converter's own config.json must agree with it on everything but what SAT's file carries across."""
    convert(sat_release, tmp_path / "hf", "--to", "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    released = hf_config(json.loads((sat_release / "model_config.json").read_text()))
    for key in set(released) - {"_name_or_path", "transformers_version"}:
        assert written[key] == released[key], key
