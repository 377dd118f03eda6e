import pytest

# SAT's logger keeps the stderr it sees at import. Import it here, at collection, so that is the session's
# stream and not the capsys stream of whichever test first builds a model (closed after that test).
import sat  # noqa: E402,F401


@pytest.fixture(scope="session")
def standin_tokenizer():
    from porter_visualglm.standin_tokenizer import standin_tokenizer_dir
    from porter_visualglm.tokenizer import ChatGLMTokenizer

    return ChatGLMTokenizer(standin_tokenizer_dir())


@pytest.fixture(scope="session")
def tiny_config():
    from porter_visualglm.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def taught_checkpoint(tmp_path_factory):
    """A tiny VisualGLM taught the shipped shapes captions for a few dozen steps (plain torch, no DeepSpeed), saved
    in SAT's layout: its answers depend on the image and the question, as a random model's do not."""
    from taught import teach

    return teach(tmp_path_factory.mktemp("taught") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_encoder_run(tmp_path_factory):
    """A pretrained tiny image encoder written by the generator's command line, 3 steps (the demo's has 2000):
    (file, the command's result). The cache is a folder of this session's."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("encoder")
    out = root / "encoder.pt"
    r = subprocess.run([sys.executable, "-m", "porter_visualglm.image_encoder", str(out), "--steps", "3"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PORTER_DEVICE": "cpu", "PORTER_CACHE": str(root / "cache")})
    return out, r


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_run):
    out, r = tiny_encoder_run
    assert r.returncode == 0, r.stderr[-3000:]
    return out
