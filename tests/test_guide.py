"""docs/writing-plugins.md, run: every ``sh`` line and ``python`` block, in order, in a fresh folder with a
throwaway environment first on PATH (``pip install -e`` installs there). A ``python`` block whose first line is
``# file: PATH`` is written to PATH instead of run. Each shell line runs from the guide's folder."""
import re
import subprocess
from pathlib import Path

import throwaway_env

GUIDE = Path(__file__).parents[1] / "docs" / "writing-plugins.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks():
    return [(lang, body) for lang, body in BLOCK.findall(GUIDE.read_text()) if lang in ("sh", "python")]


def test_the_guide_has_runnable_blocks_of_both_kinds():
    kinds = [lang for lang, _ in blocks()]
    assert kinds.count("sh") >= 3 and kinds.count("python") >= 3


def test_every_hook_is_documented_in_the_guide():
    import porter.hookspecs as specs

    hooks = [name for name in dir(specs) if name.startswith("porter_register_")]
    text = GUIDE.read_text()
    assert hooks and [h for h in hooks if f"`{h}`" not in text] == []


def test_the_guides_blocks_run_green(tmp_path):
    bin_dir = throwaway_env.make(tmp_path / ".venv")
    env = throwaway_env.env_with(bin_dir, PORTER_DEVICE="cpu")
    for n, (lang, body) in enumerate(blocks(), start=1):
        first = body.splitlines()[0]
        if lang == "python" and first.startswith("# file: "):
            target = tmp_path / first.removeprefix("# file: ").strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
            continue
        if lang == "python":
            r = subprocess.run([str(bin_dir / "python"), "-c", body], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, f"python block {n}:\n{body}\n{r.stdout}{r.stderr}"
            continue
        for line in filter(None, (raw.strip() for raw in body.splitlines())):
            r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"sh block {n}: {line}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
