"""Progress of long steps (training, playing tasks) the way a person at a terminal and a CI log both read it.

On a terminal: a live tqdm bar with rate and ETA. Piped (CI, `dvc repro > log`): a plain line every
`every` seconds and one at the end, so a log is readable and not a wall of carriage returns. Under
`accelerate launch` only the main process (RANK 0) reports, or every process would draw its own bar.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Callable


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def quiet_library_bars() -> None:
    """datasets and huggingface_hub draw a bar for every map and download; in a piped log each is a burst of
    carriage-return lines that hide what matters. They stay on at a terminal."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # TRL's DPO draws "Computing reference log probs" with a bar that only this variable turns off
        os.environ.setdefault("TQDM_DISABLE", "1")


class Progress:
    """`done` of `total` units, with free-form details (loss, tokens/s) beside the count."""

    def __init__(self, label: str, total: int, unit: str, stream: IO[str] | None = None, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.clock = every, clock
        self.silent = int(os.environ.get("RANK", "0")) != 0
        self.started = self.last_line = clock()
        self.done, self.details = 0, ""
        self.bar = None
        if not self.silent and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=f" {unit}", file=self.stream, dynamic_ncols=True)

    def update(self, done: int, **details) -> None:
        """Sets the count to `done` (not an increment: callers know where they are, e.g. a trainer's step)."""
        if self.silent:
            return
        self.details = ", ".join(f"{k} {v}" for k, v in details.items())
        if self.bar is not None:
            self.bar.update(done - self.done)
            if details:
                self.bar.set_postfix_str(self.details, refresh=True)
        self.done = done
        now = self.clock()
        if self.bar is None and now - self.last_line >= self.every and done < self.total:
            self.last_line = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        # Extrapolating from the first few units is wild: a batch of episodes can finish its 1-turn ones
        # first (2 of 480 after 3 minutes read as an 11-hour ETA), so there is none before 5% is done.
        eta = elapsed / self.done * (self.total - self.done) if self.done >= max(1, self.total / 20) else None
        pct = 100 * self.done / self.total if self.total else 100
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)", f"elapsed {_eta(elapsed)}"]
        if self.done < self.total:
            parts.append(f"ETA {_eta(eta)}" if eta is not None else "ETA ?")
        if self.details:
            parts.append(self.details)
        print(", ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.silent:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(self.clock())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
