"""`porter run`: every input a user can get wrong is checked in the parent, before DeepSpeed starts a worker, and
answered with one error line and its documented exit code (2 usage, 7 an unusable input file), never a traceback."""
import pytest
from porter_visualglm.release import make_release_folder

from porter.testing import run_porter

ENV = {"PORTER_DEVICE": "cpu"}
TRAIN = ("run", "visualglm", "train", "--device", "cpu")
INFER = ("run", "visualglm", "infer")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    (root / "a-file").write_text("not a folder")
    (root / "not.json").write_text("{ not json")
    (root / "empty-run").mkdir()
    corrupt = make_release_folder(root / "corrupt")
    (corrupt / "1" / "mp_rank_00_model_states.pt").write_bytes(b"\x00garbage" * 100)
    make_release_folder(root / "release")
    import torch

    torch.save({"mixins.eva.model.vit.transformer.word_embeddings.weight": torch.zeros(3, 3)}, root / "wrong-encoder.pt")
    return root


CASES = [
    # usage: argparse and the launcher's own checks
    (TRAIN + ("--npus", "0"), 2, "argument --npus: must be at least 1, not 0"),
    (TRAIN + ("--npus", "-3"), 2, "argument --npus: must be at least 1, not -3"),
    (TRAIN + ("--npus", "999"), 2, "--npus 999, but this machine has"),
    (TRAIN + ("--iters", "-1"), 2, "argument --iters: must be at least 1, not -1"),
    (TRAIN + ("--batch-size", "0"), 2, "argument --batch-size: must be at least 1, not 0"),
    (TRAIN + ("--lr", "-1"), 2, "argument --lr: must be more than 0, not -1"),
    (TRAIN + ("--preset", "huge"), 2, "argument --preset: invalid choice: 'huge'"),
    (TRAIN + ("--save", "{root}/a-file"), 2, "--save {root}/a-file: a file, not a folder"),
    (TRAIN + ("--vision-lr-scale", "-1"), 2, "argument --vision-lr-scale: must be 0 or more, not -1"),
    (TRAIN + ("--qformer-lr-scale", "-0.5"), 2, "argument --qformer-lr-scale: must be 0 or more, not -0.5"),
    (TRAIN + ("--seed", "0"), 2, "argument --seed: must be at least 1, not 0"),  # SAT asserts seed > 0
    (TRAIN + ("--sampling", "random"), 2, "argument --sampling: invalid choice"),
    (TRAIN + ("--image-encoder", "{root}/not.json", "--from_pretrained", "{root}/release"), 2,
     "--image-encoder with --from_pretrained: the checkpoint already holds an image encoder"),
    (TRAIN + ("--resume", "--save", "{root}/empty-run"), 2, "--resume: no checkpoint under {root}/empty-run/checkpoints"),
    (INFER + ("--max_length", "0"), 2, "argument --max_length/--max-length: must be at least 1, not 0"),
    (INFER + ("--temperature", "-1"), 2, "argument --temperature: must be more than 0, not -1"),
    (INFER + ("--top_p", "2"), 2, "argument --top_p/--top-p: must be in (0, 1], not 2"),
    (INFER + ("--preset", "huge"), 2, "argument --preset: invalid choice: 'huge'"),
    # input files: exit 7, the file named
    (TRAIN + ("--data", "{root}/nothing-here"), 7, "{root}/nothing-here: no such file or folder"),
    (TRAIN + ("--data", "{root}/not.json"), 7, "{root}/not.json: not valid JSON"),
    (TRAIN + ("--max_source_length", "8"), 7, "--max-source-length 8 leaves no room for the question"),
    (TRAIN + ("--image-encoder", "{root}/nothing.pt"), 7, "--image-encoder {root}/nothing.pt: no such file"),
    (TRAIN + ("--image-encoder", "{root}/not.json"), 7, "checkpoint file corrupt: {root}/not.json"),
    (TRAIN + ("--image-encoder", "{root}/wrong-encoder.pt"), 7,
     "--image-encoder {root}/wrong-encoder.pt: not an image encoder for this model ("),
    (TRAIN + ("--from_pretrained", "{root}/corrupt"), 7,
     "checkpoint file corrupt: {root}/corrupt/1/mp_rank_00_model_states.pt"),
    (TRAIN + ("--from_pretrained", "{root}/release"), 7, "this checkpoint uses ChatGLM-6B's tokenizer: pass --chatglm_path"),
    (INFER + ("--from_pretrained", "{root}/corrupt"), 7, "checkpoint file corrupt: {root}/corrupt"),
    (INFER + ("--from_pretrained", "{root}/a-file"), 7, "{root}/a-file: no such checkpoint folder"),
    (INFER + ("--chatglm_path", "{root}"), 7, "{root}/ice_text.model: no ice_text.model here"),
]


@pytest.mark.parametrize("argv,code,message", CASES, ids=[" ".join(c[0][2:]) for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code_before_anything_starts(files, argv, code, message):
    argv = [a.format(root=files) for a in argv]
    r = run_porter(*argv, env=ENV, timeout=120)
    assert r.returncode == code, r.stderr[-2000:]
    assert message.format(root=files) in r.stderr
    assert "Traceback" not in r.stderr and "launching:" not in r.stderr and "sigkill_handler" not in r.stderr
    assert not (files / "runs").exists()


def test_exit_codes_are_documented_in_help():
    r = run_porter("--help")
    assert "7  an input file cannot be used (data set, checkpoint, tokenizer)" in r.stdout
    r = run_porter("run", "--help")
    assert r.returncode == 0 and "demo" in r.stdout and "check" in r.stdout


def test_the_run_folder_is_not_created_by_a_refused_run(files, tmp_path):
    save = tmp_path / "run"
    r = run_porter(*TRAIN, "--data", str(files / "not.json"), "--save", str(save), env=ENV, timeout=120)
    assert r.returncode == 7 and not save.exists()  # the run folder is made only after every check passed
