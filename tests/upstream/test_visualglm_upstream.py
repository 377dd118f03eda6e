"""Acceptance on upstream VisualGLM-6B's own repository (THUDM/VisualGLM-6B at UPSTREAM_COMMIT), untouched by hand.

``PORTER_VISUALGLM_UPSTREAM`` names a checkout of it (e.g. ``git archive UPSTREAM_COMMIT | tar -x -C DIR``); without
it these tests are skipped. Each test works on a copy in tmp:

- ``porter patch DIR`` rewrites its CUDA-only code into ``porter.runtime.device`` calls, after which ``porter scan
  DIR`` finds no CUDA-only site, every .py file compiles, and ``porter revert DIR`` gives the tree back byte for byte;
- upstream's own inference entry (``model.get_infer_setting()`` then ``model.chat(...)``, as ``api.py`` and
  ``cli_demo.py`` use them) completes a chat turn about an image on the CPU, through the patched SAT, on a stand-in
  checkpoint in the release's layout under ``$SAT_HOME/visualglm-6b`` and a stand-in ``THUDM/chatglm-6b`` tokenizer
  in a local Hugging Face cache (``upstream_standins``), while the unported tree dies on its ``model.cuda()``.

Needs what upstream imports on that path: transformers (SAT 0.4.12 already requires it), torchvision, Pillow:
``.venv/bin/pip install -c constraints.txt -e '.[upstream]'``. To run it::

    git --git-dir=THE_MIRROR archive e314fb9c4e778851414f39784317c72765acec47 -- . ':(exclude)fewshot-data.zip' \
        | tar -x -C /tmp/VisualGLM-6B
    PORTER_VISUALGLM_UPSTREAM=/tmp/VisualGLM-6B .venv/bin/python -m pytest -q tests/upstream
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from upstream_standins import UPSTREAM_COMMIT, UPSTREAM_ENV, UPSTREAM_REPO, write_hf_home, write_sat_home

from porter.testing import run_porter, tree_digest

HERE = Path(__file__).parent
UPSTREAM = os.environ.get(UPSTREAM_ENV, "")

pytestmark = pytest.mark.skipif(
    not UPSTREAM or not (Path(UPSTREAM) / "model" / "infer_util.py").is_file(),
    reason=f"{UPSTREAM_ENV} names no checkout of {UPSTREAM_REPO} (commit {UPSTREAM_COMMIT})")

# The CUDA-only sites of upstream at UPSTREAM_COMMIT, read by hand: (file, line, the API porter scan names).
# On the inference path: model/infer_util.py's two (get_infer_setting).
UPSTREAM_SITES = {
    ("model/infer_util.py", 19, "'cuda'"), ("model/infer_util.py", 27, ".cuda()"),
    ("cli_demo.py", 35, "torch.cuda.is_available"), ("cli_demo.py", 36, "torch.cuda.is_available"),
    ("cli_demo.py", 36, "'cuda'"), ("cli_demo.py", 42, "torch.cuda.is_available"), ("cli_demo.py", 43, ".cuda()"),
    ("cli_demo_mp.py", 35, "torch.cuda.is_available"), ("cli_demo_mp.py", 36, "torch.cuda.is_available"),
    ("cli_demo_mp.py", 36, "'cuda'"), ("cli_demo_mp.py", 42, "torch.cuda.is_available"),
    ("cli_demo_mp.py", 43, ".cuda()"),
    ("finetune_visualglm.py", 179, "torch.cuda.is_available"), ("finetune_visualglm.py", 180, "'cuda'"),
    ("finetune_visualglm.py", 181, "'cuda'"),
    ("api_hf.py", 11, ".cuda()"), ("cli_demo_hf.py", 8, ".cuda()"),
    ("web_demo_hf.py", 94, ".cuda()"), ("web_demo_hf.py", 96, ".cuda()"),
}
IMAGE = "examples/1.jpeg"  # upstream's own example image, as its README's cli_demo session uses
QUERY = "Describe the image."  # cli_demo.py's English first-round prompt
MAX_LENGTH = 72  # the whole sequence: the prompt with its 32 image slots is 60 tokens here, so up to 12 new ones


def copy_upstream(dest: Path) -> Path:
    shutil.copytree(UPSTREAM, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"), symlinks=True)
    return dest


def scan(tree: Path) -> dict:
    r = run_porter("scan", str(tree), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def open_sites(report: dict) -> list[dict]:
    return [site for site in report["sites"] if not site.get("exempt")]


@pytest.fixture(scope="module")
def needs():
    missing = [name for name in ("transformers", "torchvision", "PIL") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"upstream's inference path imports {', '.join(missing)}: install it into this environment")


@pytest.fixture(scope="module")
def hf_env(tmp_path_factory, needs) -> dict:
    """The environment with the stand-in tokenizer's hub cache, offline."""
    return {**os.environ, **write_hf_home(tmp_path_factory.mktemp("hf")), "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def chat_env(tmp_path_factory, hf_env, sat_patched) -> dict:
    """The environment a chat turn runs in: the patched SAT copy first on the path, the stand-in checkpoint
    under SAT_HOME, the stand-in tokenizer's hub cache offline, porter's runtime on the CPU."""
    return {**hf_env, "SAT_HOME": str(write_sat_home(tmp_path_factory.mktemp("sat"))), "PORTER_DEVICE": "cpu",
            "PYTHONPATH": str(sat_patched)}


def chat_turn(tree: Path, env: dict) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(tree)])}
    return subprocess.run([sys.executable, str(HERE / "chat_turn.py"), IMAGE, QUERY, str(MAX_LENGTH)], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ported(tmp_path_factory) -> tuple[Path, str, dict]:
    """A copy of the checkout patched by ``porter patch``: (its folder, its digest before, the scan before)."""
    tree = copy_upstream(tmp_path_factory.mktemp("ported") / "VisualGLM-6B")
    before, report = tree_digest(tree), scan(tree)
    r = run_porter("patch", str(tree))
    assert r.returncode == 0, r.stdout + r.stderr
    return tree, before, report


def test_the_scan_finds_upstreams_cuda_only_sites(ported):
    _tree, _before, report = ported
    found = {(site["path"], site["line"], site["api"]) for site in report["sites"]}
    assert UPSTREAM_SITES <= found, sorted(UPSTREAM_SITES - found)


def test_the_patched_tree_compiles(ported):
    tree, before, _report = ported
    assert tree_digest(tree) != before
    files = [path for path in sorted(tree.rglob("*.py")) if ".porter-state" not in path.relative_to(tree).parts]
    assert len(files) == 13
    with warnings.catch_warnings():  # upstream's own invalid escapes ("\\?" in model/chat.py) warn
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        for path in files:
            compile(path.read_bytes(), str(path), "exec")  # SyntaxError names the file and line


def test_the_patched_tree_has_no_cuda_only_site(ported):
    tree, _before, _report = ported
    report = scan(tree)
    assert open_sites(report) == [], json.dumps(open_sites(report), indent=1)


def test_the_stand_in_tokenizer_is_porters_chatglm_tokenizer(hf_env):
    """What upstream's chat calls on the tokenizer AutoTokenizer loads from the stand-in cache gives porter's ids."""
    from porter_visualglm.standin_tokenizer import standin_tokenizer_dir
    from porter_visualglm.tokenizer import ChatGLMTokenizer

    texts = ["<img>", "</img>Q:Describe the image.\nA:", "</img>问：描述这张图片。\n答：", "a  b\tc"]
    code = ("import json, sys\nfrom transformers import AutoTokenizer\n"
            "t = AutoTokenizer.from_pretrained('THUDM/chatglm-6b', trust_remote_code=True)\n"
            "texts = json.loads(sys.argv[1])\n"
            "print(json.dumps({'encode': [t.encode(s, add_special_tokens=False) for s in texts],\n"
            "  'call': t([texts[1]], return_tensors='pt')['input_ids'][0].tolist(),\n"
            "  'built': t.build_inputs_with_special_tokens([5, 6]), 'decode': t.decode(t.encode(texts[1])),\n"
            "  'ids': [t.pad_token_id, t.bos_token_id, t.eos_token_id]}))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], env=hf_env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    glm = ChatGLMTokenizer(standin_tokenizer_dir())
    assert got["encode"] == [glm.encode(text) for text in texts]
    assert got["call"] == glm.prompt_ids(texts[1])
    assert got["built"] == glm.build_inputs([5, 6])
    assert got["decode"] == glm.decode(glm.prompt_ids(texts[1]))
    assert got["ids"] == [glm.pad_token_id, glm.bos_token_id, glm.eos_token_id]


def test_upstreams_inference_entry_chats_on_the_cpu_once_ported(ported, chat_env, sat_patched):
    tree, _before, _report = ported
    r = chat_turn(tree, chat_env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Downloading models" not in r.stdout + r.stderr  # SAT's auto_create found $SAT_HOME/visualglm-6b
    out = json.loads(r.stdout.splitlines()[-1])
    assert isinstance(out["response"], str) and out["response"]  # random weights: some of the stand-in's pieces
    assert out["history"] == [[QUERY, out["response"]]]
    assert out["image"] == [[1, 3, 224, 224], "torch.float16", "cpu"]  # chat() sends the image as fp16 to the model
    assert out["params"] == ["cpu/float16"]  # get_infer_setting's fp16 model, moved where porter's runtime says
    assert Path(out["sat"]).is_relative_to(sat_patched)  # the patched SAT, not the installed one
    assert out["checkpoints"]  # the patched sat/training/model_io.py loads with porter.runtime.checkpoints
    called = {name.split("/")[0] for name in out["ops"]}
    assert {"gelu", "rotary_mul"} <= called, out["ops"]  # ChatGLM's rewritten ops ran through porter.runtime.ops


def test_the_unported_tree_dies_on_cuda(tmp_path, chat_env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the unported tree runs here")
    tree = copy_upstream(tmp_path / "VisualGLM-6B")
    r = chat_turn(tree, chat_env)
    assert r.returncode != 0
    assert "model = model.cuda()" in r.stderr and "Torch not compiled with CUDA enabled" in r.stderr, r.stderr[-4000:]


def test_revert_gives_the_tree_back_byte_for_byte(ported):
    """Last: the module's ported copy is reverted."""
    tree, before, _report = ported
    r = run_porter("revert", str(tree))
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_digest(tree) == before
