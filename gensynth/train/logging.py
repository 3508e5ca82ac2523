"""Run logs (rank 0 only): metrics.jsonl, TensorBoard events, and progress on the console.

On a terminal a rich progress bar shows step, images/s, ETA and the latest losses; otherwise
(cluster logs) one plain line per log interval.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard (``tb/``)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard missing or broken: the JSON log still works
                self.tb = None

    def write(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def image(self, tag: str, chw, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, chw, step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def format_losses(values: dict[str, float], limit: int = 6) -> str:
    keys = [k for k in values if not k.startswith(("lr_", "images_per_s"))][:limit]
    return " ".join(f"{k}={values[k]:.3g}" for k in keys)


class ProgressDisplay:
    """A rich progress bar on a TTY, plain lines elsewhere (or nothing when ``enabled`` is False)."""

    def __init__(self, console: Console | None, total: int, start: int, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total
        self.bar = None
        if enabled and self.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=self.console,
                                transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, speed="", losses="")
            self.bar.start()

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def log(self, step: int, values: dict[str, float], eta_s: float | None) -> None:
        if not self.enabled:
            return
        speed = f"{values.get('images_per_s', 0.0):.1f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, speed=speed, losses=format_losses(values))
        else:
            eta = f" ETA {int(eta_s // 60)}m{int(eta_s % 60):02d}s" if eta_s is not None else ""
            self.console.print(f"step {step}/{self.total} {speed}{eta} {format_losses(values)}", highlight=False,
                               soft_wrap=True)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
