"""A run's TensorBoard event files: scalars while training, HParams at the end.

HParams are written into the run's own writer (SummaryWriter.add_hparams would start a new
timestamped subfolder), so every run of a sweep shows as one row with its own curves.

Speed: tensorboard's event writer checksums every record with a pure-Python CRC32C (about a
microsecond per byte: 30 us for a scalar, milliseconds for a histogram) on a thread that holds
the GIL, and torch's SummaryWriter queues only 10 events before the training thread waits for
it. We write each batch of scalars as one event (a Summary holds many values), give the queue
room, and compute the same masked CRC32C with google-crc32c's C code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C (as tensorboard's own masked_crc32c), computed in C."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def use_fast_crc() -> bool:
    """Point tensorboard's record writer at the C checksum; False if google-crc32c is missing."""
    try:
        import google_crc32c  # noqa: F401
    except ImportError:
        return False
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c
    return True


def after_the_files_there(log_dir: Path) -> None:
    """Wait until the clock is past the second of the newest event file in log_dir (at most a second).

    TensorBoard reads a folder's event files in name order, and a name starts with the second it
    was made in, then the host and the PID: a resumed run's file made in the same second as the
    killed run's could sort before it, and TensorBoard would then drop the killed run's steps
    instead of the ones past the checkpoint (resumed_at)."""
    stamps = [int(p.name.split(".")[3]) for p in Path(log_dir).glob("events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.01)


class RunWriter:
    def __init__(self, log_dir: Path, enabled: bool = True):
        use_fast_crc()
        if enabled:
            after_the_files_there(log_dir)
        # A deep queue: the training thread hands events over and never waits for the disk.
        self.writer = SummaryWriter(log_dir=str(log_dir), max_queue=1000) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        """All of `values` as one event: one record, one checksum, one write (not one per tag)."""
        if self.writer is None or not values:
            return
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self.writer.file_writer.add_summary(summary, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def flush(self) -> None:
        """Put every event so far on disk (the writer would wait up to 2 minutes): called with each
        checkpoint, so a run killed outright keeps its curves up to the step it resumes from."""
        if self.writer is not None:
            self.writer.flush()

    def resumed_at(self, step: int) -> None:
        """The run continues from a checkpoint of `step`: TensorBoard hides this folder's events
        past it (what the run logged after that checkpoint before it stopped), so the resumed
        curves do not show each of those steps twice. The same record SummaryWriter's purge_step writes."""
        if self.writer is not None:
            self.writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; values HParams can show (lists become strings)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif value is None or isinstance(value, (list, tuple)):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat
