"""Progress that people and logs can both read.

On a terminal: one bar per stage, redrawn in place (tqdm), with the stage's detail (counts, rate)
beside it. When the output is a file or a pipe: one line when a stage starts, then a line whenever
the stage has moved on by `step` or `every_s` seconds have passed since the last line, so a log of a
long run never goes quiet for long and never fills with redraws. Lines are written as updates come:
the enclave repeats a job's last progress every 2 s while nothing happens (enclave.service.HEARTBEAT_S),
so a piped `aaudit auditor run` writes a line at least every 10 s (tests/test_progress_cli.py).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any, Callable, TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, every_s: float = 5.0, step: float = 0.05,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        if self.tty and importlib.util.find_spec("tqdm") is None:
            self.tty = False  # tqdm comes with the `enclave` extra; without it, lines as when piped
        self.every_s, self.step, self.clock = every_s, step, clock
        self._stage: str | None = None
        self._bar: Any = None
        self._last_line = (-1.0, 0.0)  # (fraction, time) of the last line written when not a terminal

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            self._draw(stage, fraction, message)
            return
        now = self.clock()
        last_fraction, last_time = self._last_line
        if stage != self._stage or fraction - last_fraction >= self.step or now - last_time >= self.every_s \
                or (fraction == 1.0 and last_fraction < 1.0):
            self._stage, self._last_line = stage, (fraction, now)
            detail = f"  {message}" if message else ""
            print(f"{stage}: {100 * fraction:5.1f}%{detail}", file=self.stream, flush=True)

    def _draw(self, stage: str, fraction: float, message: str) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=1000, desc=stage, file=self.stream, leave=True,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        self._bar.n = int(1000 * fraction)
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def byte_counter(progress: Progress, stage: str, total: int,
                 clock: Callable[[], float] = time.monotonic) -> Callable[[int], None]:
    """An `on_progress(n_bytes)` callback that reports bytes done, rate and time left for `stage`."""
    started, done = clock(), [0]

    def add(n: int) -> None:
        done[0] += n
        elapsed = max(clock() - started, 1e-9)
        rate = done[0] / elapsed
        left = (total - done[0]) / rate if rate > 0 else 0.0
        progress.update(stage, done[0] / total if total else 1.0,
                        f"{_size(done[0])} of {_size(total)}, {_size(rate)}/s, {left:.0f} s left")

    return add


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
