"""Metrics as JSON lines (one record a line), optionally mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gptlab.io import atomic_write_text, writing


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every intact record; a damaged line (cut by a kill mid-write, corrupted bytes, not a JSON object) is
    skipped and the records after it are kept."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _step(record: dict[str, Any]) -> float:
    step = record.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


class MetricsLog:
    """Appends records; on resume, drops records past the checkpoint's step so no step is logged twice."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.kept: list[dict[str, Any]] = []  # on resume: the records up to the checkpoint, as they are on disk
        if resume_step is not None:
            self.kept = [r for r in read_metrics(self.path) if _step(r) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.kept))
        elif self.path.exists():
            self.path.unlink()
        with writing(self.path):
            self.file = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard_dir))

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
