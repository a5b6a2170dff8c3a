"""A rich progress bar over the run's steps on a terminal; nothing but log lines elsewhere."""

from __future__ import annotations

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    def __init__(self, total_steps: int, done: int = 0, console: Console | None = None):
        self.console = console or get_console()
        self.bar: Progress | None = None
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=self.console, transient=True,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=done, status="")
            self.bar.start()

    def update(self, steps_done: int, status: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=steps_done, status=status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
