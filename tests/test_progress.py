"""Progress as a piped log (CI, `dvc repro > log`) shows it: a line every `every` seconds and a last one."""

from __future__ import annotations

import io
import os

from gymtrl.progress import Progress, quiet_library_bars


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_piped_progress_prints_a_line_every_interval_and_a_final_one(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    out, clock = io.StringIO(), Clock()
    with Progress("train sft", 40, "steps", stream=out, every=10, clock=clock) as bar:
        for step in range(1, 41):
            clock.now += 1  # one step a second
            bar.update(step, loss=f"{1 / step:.4f}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "train sft: 10/40 steps (25%), elapsed 0:10, ETA 0:30, loss 0.1000"
    assert len(lines) == 4  # at 10, 20 and 30 s, then the end (no ETA once done)
    assert lines[-1] == "train sft: 40/40 steps (100%), elapsed 0:40, loss 0.0250"
    assert "\r" not in out.getvalue()


def test_no_eta_is_guessed_from_the_first_few_units(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    out, clock = io.StringIO(), Clock()
    with Progress("collect", 480, "episodes", stream=out, every=10, clock=clock) as bar:
        clock.now = 180
        bar.update(2)  # two 1-turn episodes of the first batch: no basis for an ETA yet
        clock.now = 400
        bar.update(66)
    lines = out.getvalue().splitlines()
    assert lines[0] == "collect: 2/480 episodes (0%), elapsed 3:00, ETA ?"
    assert lines[1] == "collect: 66/480 episodes (14%), elapsed 6:40, ETA 41:49"


def test_only_the_main_process_reports(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    out, clock = io.StringIO(), Clock()
    with Progress("train sft", 3, "steps", stream=out, every=0, clock=clock) as bar:
        for step in range(1, 4):
            clock.now += 5
            bar.update(step)
    assert out.getvalue() == ""


def test_library_bars_are_off_in_a_piped_log_and_on_at_a_terminal(monkeypatch):
    names = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")
    for tty in (True, False):
        for name in names:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr("sys.stderr", type("Err", (io.StringIO,), {"isatty": lambda self: tty})())
        quiet_library_bars()
        assert {n: os.environ.get(n) for n in names} == {n: (None if tty else "1") for n in names}
