"""Progress people and logs can read: one redrawn bar per stage on a terminal, paced lines when piped."""

from __future__ import annotations

import io

from aaudit.progress import Progress, byte_counter


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_piped_output_writes_paced_lines_and_never_goes_quiet() -> None:
    out, clock = io.StringIO(), _Clock()
    p = Progress(out, clock=clock, tty=False, every_s=5.0, step=0.05)
    p.update("loading model", 0.0)
    for i in range(1, 801):  # 800 requests over 100 s: a tick every 0.125 s
        clock.now = i * 0.125
        p.update("loglikelihood", i / 800, f"{i}/800 requests")
    lines = out.getvalue().splitlines()
    assert lines[0] == "loading model:   0.0%"
    assert lines[1].startswith("loglikelihood:   0.1%  1/800 requests")
    assert lines[-1] == "loglikelihood: 100.0%  800/800 requests"
    assert 20 <= len(lines) <= 40, len(lines)  # every 5 % (or 5 s), not 800 lines


def test_a_silent_stage_still_prints_every_few_seconds() -> None:
    out, clock = io.StringIO(), _Clock()
    p = Progress(out, clock=clock, tty=False, every_s=5.0)
    for t in range(0, 60):  # the enclave repeats the last progress while a stage is silent
        clock.now = float(t)
        p.update("loading model", 0.0, "")
    assert len(out.getvalue().splitlines()) == 12  # one line at the start, then one every 5 s


def test_a_terminal_gets_one_bar_per_stage_redrawn_in_place() -> None:
    out = io.StringIO()
    with Progress(out, tty=True) as p:
        for stage, n in (("loglikelihood", 273), ("generate_until", 40)):
            for i in range(n + 1):
                p.update(stage, i / n, f"{i}/{n} requests")
    text = out.getvalue()
    finished = [line for line in text.split("\n") if line.strip()]
    assert len(finished) == 2, finished  # one line per stage: every update redrew it (carriage returns)
    assert text.count("\r") > 300
    assert finished[0].rsplit("\r", 1)[-1].startswith("loglikelihood: 100%")
    assert "273/273 requests" in finished[0] and "40/40 requests" in finished[1]


def test_bytes_report_size_rate_and_time_left() -> None:
    out, clock = io.StringIO(), _Clock()
    p = Progress(out, clock=clock, tty=False)
    add = byte_counter(p, "upload model", 4_000_000_000, clock=clock)
    clock.now = 2.0
    add(1_000_000_000)
    assert out.getvalue().splitlines()[-1] == "upload model:  25.0%  1.0 GB of 4.0 GB, 500.0 MB/s, 6 s left"
