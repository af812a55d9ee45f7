"""Where a training run reports: `out_dir/metrics.jsonl`, callbacks, optional TensorBoard, progress bar.

Every event is a flat dict with `event` ("start", "train", "val", "budget", "stop", "end"), `step`
and `time` (seconds since the run started, continued across resumes); "train" events carry the
loss terms, grad norm and LR, "val" events the validation metrics. One JSON line per event. Only
the main process (rank 0) writes; other ranks get a silent `RunLog(enabled=False)`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unetkit.errors import ConfigError

Callback = Callable[[dict[str, Any]], None]


class RunLog:
    def __init__(self, out_dir: Path, *, enabled: bool, total_steps: int, start_step: int = 0,
                 progress: bool = False, tensorboard: bool = False,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.enabled = enabled
        self.callbacks = list(callbacks) if enabled else []
        self.path = out_dir / "metrics.jsonl"
        self._file = self.path.open("a") if enabled else None
        self._tb = _tensorboard_writer(out_dir / "tensorboard") if enabled and tensorboard else None
        self._bar = progress_bar(total_steps, start_step) if enabled and progress else None
        self._last_val = ""

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _json_number(v) for k, v in event.items()}
        assert self._file is not None
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            kind = clean.get("event")
            for k, v in clean.items():
                if kind in ("train", "val") and isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(f"{kind}/{k}", v, clean["step"])
        for callback in self.callbacks:
            callback(clean)

    def progress(self, step: int, loss: float, lr: float, val: tuple[str, float | None] | None = None) -> None:
        if self._bar is None:
            return
        if val is not None and val[1] is not None:
            self._last_val = f"{val[0]}={val[1]:.4f}"
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        if self._last_val:
            postfix["val"] = self._last_val
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def set_total(self, total_steps: int) -> None:
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All events of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _json_number(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def progress_bar(total: int, initial: int, desc: str = "train"):
    """The step progress bar on stderr (training, pretraining)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        raise ConfigError(
            "tensorboard: logging to TensorBoard needs the tensorboard package; "
            "install it with `pip install unetkit[tensorboard]` or set tensorboard=false"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))
