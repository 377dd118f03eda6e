"""What a training run shows and leaves behind: a progress line on rank 0, metrics.jsonl, loss.png, a summary.

Model plugins call :class:`RunLog` once per optimizer step; it does nothing on other ranks.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


class RunLog:
    def __init__(self, run_dir: Path, total_steps: int, rank: int = 0, log_interval: int = 1, stream=None):
        self.run_dir = Path(run_dir)
        self.total, self.rank, self.every = total_steps, rank, max(1, log_interval)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.rows: list[dict] = []
        self.started = time.monotonic()
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def step(self, step: int, loss: float, lr: float, samples: int, tokens: int, seconds: float) -> None:
        if self.rank != 0:
            return
        row = {"step": step, "loss": loss, "lr": lr, "samples": samples, "tokens": tokens,
               "samples_per_s": samples / seconds if seconds > 0 else 0.0,
               "tokens_per_s": tokens / seconds if seconds > 0 else 0.0, "seconds": seconds,
               "elapsed": time.monotonic() - self.started}
        self.rows.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tty or step % self.every == 0 or step == self.total:
            self._show(row)

    def _show(self, row: dict) -> None:
        width = 24
        done = int(width * row["step"] / max(self.total, 1))
        text = (f"[{'#' * done}{'.' * (width - done)}] step {row['step']}/{self.total}  loss {row['loss']:.4f}  "
                f"lr {row['lr']:.2e}  {row['samples_per_s']:.1f} samples/s")
        end = "\r" if self.tty and row["step"] < self.total else "\n"
        print(text, end=end, file=self.stream, flush=True)

    def close(self, checkpoint: str | None = None) -> dict:
        """Write loss.png and return (and print) the summary; rank 0 only."""
        if self.rank != 0:
            return {}
        self.file.close()
        losses = [r["loss"] for r in self.rows]
        timed = self.rows[1:] or self.rows  # the first step pays for warm-up
        summary = {
            "steps": len(self.rows),
            "final_loss": losses[-1] if losses else None,
            "mean_loss": sum(losses) / len(losses) if losses else None,
            "samples_per_s": sum(r["samples_per_s"] for r in timed) / len(timed) if timed else None,
            "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed) if timed else None,
            "checkpoint": checkpoint,
            "metrics": str(self.run_dir / "metrics.jsonl"),
            "loss_curve": str(self.run_dir / "loss.png") if losses else None,
        }
        if losses:
            plot_loss([r["step"] for r in self.rows], losses, self.run_dir / "loss.png")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


# The two lines of loss.png: the raw loss stays in the background (every step, noise included), the smoothed loss
# is the curve a reader follows.
RAW_COLOR = "#a9c4e8"
SMOOTH_COLOR = "#1f4e9c"


def smoothing_span(points: int) -> int:
    """The EMA's span in steps: about a tenth of the run, so a 10-step run is barely smoothed and a long run's
    noise is averaged out without the curve lagging far behind the loss."""
    return max(2, min(100, round(points / 10)))


def ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average with alpha = 2 / (span + 1), bias-corrected (as TensorBoard's smoothing is):
    without the correction the curve would start from 0 instead of from the first value."""
    alpha = 2.0 / (span + 1)
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


def plot_loss(steps: list[int], losses: list[float], path: Path, size=(640, 400)) -> Path:
    """Loss against step, ``size`` pixels: the raw loss thin and light, its EMA on top.

    The loss axis is logarithmic: a run's loss falls by orders of magnitude (the demo's from 11.9 to 0.002), and on a
    linear axis everything after the first drop is a flat line. A loss of 0 or below cannot sit on a log axis, so a
    run that has one is drawn on a linear axis. nan and inf are left out (the line joins the finite steps around
    them): they have no place on any axis, and one would stretch or break the smoothed curve.
    matplotlib is imported here, not at the top: ``import porter.metrics`` runs in every training process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    points = [(s, x) for s, x in zip(steps, losses) if math.isfinite(x)]
    log = bool(points) and all(x > 0 for _, x in points)
    dpi = 100
    # Figure + the Agg canvas, not pyplot: no global figure state and no backend switch in the caller's process
    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title("training loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (log scale)" if log else "loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, which="major", color="#e6e6e6", linewidth=0.8)
    if log:
        axes.set_yscale("log")
    xs, ys = [s for s, _ in points], [x for _, x in points]
    if len(points) == 1:
        axes.plot(xs, ys, "o", color=SMOOTH_COLOR, label="loss")
        axes.set_xticks(xs)  # else the step axis is ticked in fractions of a step around the one point
    elif points:
        span = smoothing_span(len(points))
        # on a log axis the average is taken of log(loss): an arithmetic mean of 11.9 and 0.002 would hide the
        # small values for many steps after a drop
        smooth = [math.exp(v) for v in ema([math.log(y) for y in ys], span)] if log else ema(ys, span)
        axes.plot(xs, ys, color=RAW_COLOR, linewidth=1, label="loss")
        axes.plot(xs, smooth, color=SMOOTH_COLOR, linewidth=2,
                  label=f"EMA of {'log ' if log else ''}loss, span {span} steps")
    else:
        axes.text(0.5, 0.5, "no finite loss to plot", ha="center", va="center", transform=axes.transAxes)
    if points:
        axes.legend(loc="upper right", frameon=False)
    path = Path(path)
    figure.savefig(path, format="png", dpi=dpi)
    return path
