"""Services a stage starts (a model server, NeMo Gym and its Ray cluster) and the guarantee that none
of them outlives the stage, also when the stage is killed with SIGKILL.

Every process a `Supervisor` starts carries `GYMTRL_RUN_ID=<id>` in its environment, and so do all
their descendants: Ray's workers and Gym's servers start new process groups, but inherit the
environment. Stopping = SIGINT to each service (Gym shuts its servers and Ray down on SIGINT), a
grace period, then SIGKILL to every process that still carries the marker. A small watcher process
(`python -m gymtrl.processes`, in its own session) does the same the moment the stage dies, so a
`kill -9` of the stage leaves nothing behind either. Linux (/proc); elsewhere only the process groups
are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER = "GYMTRL_RUN_ID"


def log_tail(log: Path, n: int = 3000) -> str:
    """The end of a service's log, for an error message."""
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def marked(run_id: str) -> list[int]:
    """Pids of live processes whose environment carries this run's marker."""
    needle = f"{MARKER}={run_id}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return [p for p in pids if p != os.getpid()]


def kill_marked(run_id: str, grace: float = 5.0) -> None:
    """SIGTERM, then after `grace` seconds SIGKILL, every process of the run."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = marked(run_id)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while pids and time.time() < deadline:
            time.sleep(0.1)
            pids = marked(run_id)


class Supervisor:
    """Starts services in their own sessions, all marked; `with Supervisor() as s:` stops every one on
    the way out, whatever happened inside."""

    def __init__(self, grace: float = 20.0):
        self.run_id = uuid.uuid4().hex
        self.grace = grace
        self.services: list[subprocess.Popen] = []
        self._watcher: subprocess.Popen | None = None

    def env(self, extra: dict | None = None) -> dict:
        return {**os.environ, **(extra or {}), MARKER: self.run_id}

    def __enter__(self) -> "Supervisor":
        if sys.platform == "linux":
            self._watcher = subprocess.Popen(
                [sys.executable, "-m", "gymtrl.processes", str(os.getpid()), self.run_id],
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        return self

    def start(self, cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
        """Starts `cmd` with its output in `log`, a fresh file: readiness is read from it (a previous
        run's "ready" line, say of a killed run, must not count)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=self.env(env), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.services.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGINT to the service (Gym stops its servers and Ray on it), then SIGKILL to its group."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.services):
            self.stop(proc)
        if sys.platform == "linux":
            kill_marked(self.run_id)  # what left its group (Ray workers), and the watcher
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait()


def _watch(stage_pid: int, run_id: str) -> None:
    """The watcher: waits for the stage to end, then stops whatever of the run is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            os.kill(stage_pid, 0)
            state = Path(f"/proc/{stage_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.5)
    for pid in marked(run_id):  # a polite stop first: Gym shuts Ray down on SIGINT
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while marked(run_id) and time.time() < deadline:
        time.sleep(0.2)
    kill_marked(run_id)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2])
