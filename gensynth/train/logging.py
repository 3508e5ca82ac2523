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


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``step`` (written by a run that crashed or stopped after its last
    checkpoint, and about to be written again by the resumed run); atomically. Returns how many were dropped. A
    line that is not JSON (a write cut short) is dropped too."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = int(record.get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        from gensynth.checkpoint import write_text_atomic

        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard (``tb/``).

    ``start_step``: the step the run (re)starts from; records after it, left by a run that ended after its last
    checkpoint, are dropped from metrics.jsonl and purged from TensorBoard (``purge_step``), so that every step
    appears once."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, start_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.dropped = truncate_metrics(self.path, start_step)
        self._file = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=start_step + 1)
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


class _TwoLineProgress(Progress):
    """The bar line (step, images/s, ETA: what must stay visible in 80 columns) and, below it, the losses."""

    losses: str = ""

    def get_renderables(self):
        from rich.text import Text

        yield self.make_tasks_table(self.tasks)
        if self.losses:
            yield Text("  " + self.losses, overflow="ellipsis", no_wrap=True)


class ProgressDisplay:
    """A rich progress bar on a TTY (step, images/s and ETA on the first line, the latest losses on a second), plain
    lines elsewhere (or nothing when ``enabled`` is False)."""

    def __init__(self, console: Console | None, total: int, start: int, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total
        self.bar = None
        if enabled and self.console.is_terminal:
            self.bar = _TwoLineProgress(TextColumn("[bold]train"), BarColumn(bar_width=16), MofNCompleteColumn(),
                                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                        TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, speed="")
            self.bar.start()

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def first_step(self, step: int, seconds: float) -> None:
        """Plain-line mode: say that training runs before the first log interval is reached."""
        if self.enabled and self.bar is None:
            self.console.print(f"step {step}/{self.total} done ({seconds:.1f} s); losses every "
                               f"trainer.log_every steps", highlight=False, soft_wrap=True)

    def log(self, step: int, values: dict[str, float], eta_s: float | None) -> None:
        if not self.enabled:
            return
        speed = f"{values.get('images_per_s', 0.0):.1f} img/s"
        if self.bar is not None:
            self.bar.losses = format_losses(values)
            self.bar.update(self.task, completed=step, speed=speed)
        else:
            eta = f" ETA {int(eta_s // 60)}m{int(eta_s % 60):02d}s" if eta_s is not None else ""
            self.console.print(f"step {step}/{self.total} {speed}{eta} {format_losses(values)}", highlight=False,
                               soft_wrap=True)

    def message(self, text: str, markup: bool = True) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True, markup=markup)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
