"""loss.png (porter.metrics.plot_loss) and the run summary that writes it: a PNG of the asked size that shows the
loss, on a log axis where a loss falling by orders of magnitude stays readable, for any list of losses a run
can produce (one step, nan/inf, a flat loss, a zero loss)."""
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from porter.metrics import SMOOTH_COLOR, RunLog, ema, plot_loss  # noqa: E402

SIZE = (640, 400)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def _open(path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.size == SIZE
    return image.convert("RGB")


def _assert_drawn(image: Image.Image, colour: tuple[int, int, int] | None = None) -> None:
    """Not a blank canvas: axes, labels and text in several colours; and ``colour`` (a line's) somewhere."""
    pixels = np.asarray(image).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # distinct colours
    ink = int((pixels.astype(int).sum(axis=1) < 600).sum())  # pixels clearly darker than the white canvas
    assert ink > 0.005 * SIZE[0] * SIZE[1]
    if colour is not None:
        assert (pixels == colour).all(axis=1).any(), f"no pixel of the line's colour {colour}"


def test_a_loss_falling_by_orders_of_magnitude_is_drawn_on_a_log_axis(tmp_path):
    # the demo's shape: 11.9 down to 0.002, evenly on a log scale
    steps = list(range(1, 401))
    losses = [11.9 * (0.002 / 11.9) ** ((s - 1) / 399) for s in steps]
    image = _open(plot_loss(steps, losses, tmp_path / "loss.png"))
    _assert_drawn(image, _rgb(SMOOTH_COLOR))
    # Half-way through, the loss is ~0.15: on a linear axis from 0 to 11.9 the curve would lie on the bottom
    # edge there; on a log axis it is near the middle of the plot. (Rows under the title and legend only.)
    x = SIZE[0] // 2
    rows = [y for y in range(int(0.2 * SIZE[1]), SIZE[1]) if image.getpixel((x, y)) == _rgb(SMOOTH_COLOR)]
    assert rows, "the smoothed curve does not cross the middle of the plot"
    assert 0.25 * SIZE[1] < sum(rows) / len(rows) < 0.6 * SIZE[1]


@pytest.mark.parametrize("losses", [
    [3.0],  # one step
    [2.0, math.nan, math.inf, 1.5, -math.inf, 1.0],  # nan/inf are skipped
    [2.0, 2.0, 2.0, 2.0],  # a flat loss: an axis with no range
    [1.0, 0.5, 0.0],  # a zero loss: no log axis for it
], ids=["one-step", "nan-inf", "all-equal", "zero"])
def test_any_run_gives_a_valid_drawn_png(tmp_path, losses):
    path = plot_loss(list(range(1, len(losses) + 1)), losses, tmp_path / "loss.png")
    _assert_drawn(_open(path), _rgb(SMOOTH_COLOR))


def test_no_finite_loss_still_gives_a_png_that_says_so(tmp_path):
    _assert_drawn(_open(plot_loss([1, 2], [math.nan, math.inf], tmp_path / "loss.png")))


def test_the_smoothing_is_a_bias_corrected_ema():
    assert ema([], 5) == []
    assert ema([4.0, 4.0, 4.0], 5) == pytest.approx([4.0, 4.0, 4.0])  # no pull towards 0 at the start
    # span 2: alpha 2/3, so the older value weighs (1 - 2/3) * 2/3 = 2/9 against the newer's 2/3 = 6/9
    assert ema([1.0, 0.0], 2) == pytest.approx([1.0, 2 / 8])


def test_the_run_summary_writes_loss_png(tmp_path):
    log = RunLog(tmp_path / "run", total_steps=3, stream=io.StringIO())
    for step, loss in enumerate([5.0, 1.0, 0.01], start=1):
        log.step(step, loss, lr=1e-3, samples=4, tokens=64, seconds=0.5)
    summary = log.close()
    assert summary["loss_curve"] == str(tmp_path / "run" / "loss.png")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3
    _assert_drawn(_open(tmp_path / "run" / "loss.png"), _rgb(SMOOTH_COLOR))


def test_importing_porter_metrics_does_not_import_matplotlib():
    code = "import sys, porter.metrics; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
