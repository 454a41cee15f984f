"""A local Ray cluster on loopback, for tests, benchmarks and trying things out.

``LocalRayCluster`` runs ``ray start --head --block`` on 127.0.0.1 (a free port,
``--num-cpus``, no dashboard, a bounded object store, no usage stats) in a process
session of its own, and stops it by that session: SIGTERM to ``ray start``, then
SIGKILL to every process left in the session (the GCS, the raylet, the workers).
Nothing of it outlives ``stop()``, also when the code using it failed, and nothing else
is touched (``ray stop`` would end every Ray process of the machine).

Ray swaps 127.0.0.1 for the machine's interface address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is in the environment of ``ray start`` and of
the driver *before it imports ray*: this module sets it for both and refuses to start
if ``ray`` was already imported without it. It does not import ray.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["LOOPBACK_ENV", "LocalRayCluster", "use_loopback"]

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_ENV = "RAY_AUTH_MODE"


def use_loopback() -> None:
    """Set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for this process (before ``ray`` is
    imported); ``RuntimeError`` if ray was imported with another value. Also
    ``RAY_AUTH_MODE=disabled`` unless set: a local ``ray.init()`` writes
    ``~/.ray/auth_token``, and from then on every ``ray start`` enforces that token
    and a driver without it is refused."""
    os.environ.setdefault(AUTH_ENV, "disabled")
    if os.environ.get(LOOPBACK_ENV) == "0":
        return
    if "ray" in sys.modules:
        raise RuntimeError(
            f"ray was imported before {LOOPBACK_ENV}=0 was set: a driver on loopback "
            "needs it before `import ray` (export it, or import this module first)"
        )
    os.environ[LOOPBACK_ENV] = "0"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _before_exec() -> Callable[[], object] | None:
    """For ``ray start``'s process, to run before exec, on Linux (None elsewhere):

    - SIGTERM it when its parent dies (``prctl(PR_SET_PDEATHSIG)``; ``ray start
      --block`` then stops the cluster), so a killed test run leaves no cluster behind;
    - SIGINT back to its default. A process started with SIGINT ignored (a shell's
      background job: ``cmd &``) passes that on to every process it starts, Ray's
      workers too; Python then installs no ``KeyboardInterrupt`` handler in them, and
      Ray's ``ray.cancel(force=False)`` interrupts nothing.

    Resolved here, in the parent: the child, forked from a process that may run
    threads (a Ray driver's), only makes these two foreign calls, importing nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl, set_handler = libc.prctl, libc.signal
    except (OSError, AttributeError):
        return None
    set_handler.argtypes = [ctypes.c_int, ctypes.c_void_p]  # signal(int, sighandler_t)
    set_handler.restype = ctypes.c_void_p
    end_with_parent = functools.partial(prctl, 1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    default_sigint = functools.partial(set_handler, int(signal.SIGINT), None)  # SIG_DFL

    def before_exec() -> None:
        end_with_parent()
        default_sigint()

    return before_exec


def _ray_command() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


class LocalRayCluster:
    """``with LocalRayCluster(cpus=2) as cluster: Client(cluster.address, engine="ray")``.

    ``start()`` returns once the head answers (``TimeoutError`` naming the log after
    ``start_timeout`` seconds); ``stop()`` (idempotent) leaves no process behind;
    ``kill()`` ends it abruptly, as a crash would.
    """

    def __init__(
        self,
        cpus: int = 2,
        object_store_bytes: int = 200_000_000,
        start_timeout: float = 120.0,
    ) -> None:
        self.cpus = cpus
        self.object_store_bytes = object_store_bytes
        self.start_timeout = start_timeout
        self.port = 0
        self.address = ""
        """``127.0.0.1:port``: the GCS address to give ``Client(..., engine="ray")``."""
        self._process: subprocess.Popen[bytes] | None = None
        self._directory = ""

    def start(self) -> LocalRayCluster:
        """Start the head node and wait until it is up."""
        use_loopback()
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's unix sockets live under it (108 bytes at most).
        self._directory = tempfile.mkdtemp(prefix="ffray")
        log_path = os.path.join(self._directory, "ray-start.log")
        command = [
            _ray_command(), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--num-cpus", str(self.cpus), "--include-dashboard", "false",
            "--object-store-memory", str(self.object_store_bytes),
            "--disable-usage-stats", "--temp-dir", self._directory,
        ]  # fmt: skip
        env = dict(os.environ, **{LOOPBACK_ENV: "0", AUTH_ENV: os.environ[AUTH_ENV]})
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_before_exec(),
            )
        deadline = time.monotonic() + self.start_timeout
        try:
            while b"Ray runtime started" not in Path(log_path).read_bytes():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    tail = Path(log_path).read_text(errors="replace")[-2000:]
                    raise TimeoutError(f"`ray start` did not come up ({log_path}):\n{tail}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        """Every live process of the cluster (its process session)."""
        if self._process is None:
            return []
        session = self._process.pid
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getsid(int(entry)) == session:
                    found.append(int(entry))
            except OSError:
                continue
        return found

    def kill(self) -> None:
        """SIGKILL every process of the cluster at once (a crash, not a stop)."""
        if self._process is not None:
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def stop(self, grace: float = 5.0) -> None:
        """Stop the cluster; no process of it is left when this returns."""
        process, self._process = self._process, None
        if process is not None:
            self._process = process  # pids() reads it
            if process.poll() is None:
                process.terminate()  # ray start --block stops its children
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            deadline = time.monotonic() + 30.0
            while self.pids() and time.monotonic() < deadline:
                self._signal_all(signal.SIGKILL)
                time.sleep(0.05)
            if process.poll() is None:
                process.kill()
            process.wait()
            left = self.pids()
            self._process = None
            if left:
                raise RuntimeError(f"Ray processes {left} survived SIGKILL")
        if self._directory:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = ""

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
