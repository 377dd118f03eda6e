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


def plot_loss(steps: list[int], losses: list[float], path: Path, size=(640, 400)) -> Path:
    """A plain line chart of loss against step, drawn with Pillow."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    finite = [x for x in losses if math.isfinite(x)] or [0.0]
    lo, hi = min(finite), max(finite)
    hi = hi if hi > lo else lo + 1.0
    s0, s1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1

    def xy(step, loss):
        return (left + (step - s0) / (s1 - s0) * (w - left - right),
                top + (hi - loss) / (hi - lo) * (h - top - bottom))

    pen.rectangle((left, top, w - right, h - bottom), outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        y = xy(s0, value)[1]
        pen.line((left - 4, y, left, y), fill="black")
        pen.text((4, y - 6), f"{value:.3g}", fill="black")
    pen.text((left, h - bottom + 8), f"step {s0}", fill="black")
    pen.text((w - right - 60, h - bottom + 8), f"step {s1}", fill="black")
    pen.text((left, 8), "training loss", fill="black")
    points = [xy(s, loss) for s, loss in zip(steps, losses) if math.isfinite(loss)]
    if len(points) > 1:
        pen.line(points, fill=(30, 90, 200), width=2)
    elif points:
        pen.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=(30, 90, 200))
    path = Path(path)
    image.save(path)
    return path
