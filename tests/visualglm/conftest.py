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
