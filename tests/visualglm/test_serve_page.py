"""The chat page in a real browser: headless Chromium from the system packages, driven by Playwright."""
import pytest
from browser import converse
from porter_visualglm.evaluate import held_out
from porter_visualglm.serving.local import LocalServer

pytestmark = pytest.mark.slow


def test_the_page_uploads_an_image_streams_answers_continues_and_starts_over(taught_checkpoint):
    item = held_out()[0]
    with LocalServer("--from_pretrained", taught_checkpoint, "--model-name", "visualglm-taught") as server:
        seen = converse(server.url, str(item.image), ["图片里有什么？", "What's in the image?"])
        health = server.health()
    assert seen["errors"] == []
    assert seen["model"] == "visualglm-taught"
    assert all(answer.strip() for answer in seen["answers"]) and len(seen["answers"]) == 2
    assert health["batches"] == 2  # each question reached the model
    assert any(len(lengths) > 2 for lengths in seen["streamed"])  # the text grew in steps: it streamed
    assert seen["turns_before_reset"] == 4 and seen["turns_after_reset"] == 0
