"""Worker processes for the scheduler stub, forked from a clean "zygote" process.

Why not ``multiprocessing``: with its ``spawn`` and ``forkserver`` start methods every
child re-imports the parent's main script (as ``__mp_main__``), so a user's script that
creates an embedded ``Client()`` without an ``if __name__ == "__main__":`` guard would
run again in every worker; ``fork`` is unsafe in a process that runs ZeroMQ and other
threads. So the stub starts one small interpreter (``_zygote.py``, which imports
nothing of the user's) per stub process, the zygote, and asks it to ``fork()`` each
worker: a fork of a single-threaded process that only imported the worker's modules
(``running.py``: no ZeroMQ, no client) costs a few milliseconds to start and under a
millisecond to kill, and nothing of the user's script runs twice.

Wire, all over Unix socket pairs:

- stub -> zygote (one ``socket.socketpair`` per stub process, shared by its stubs):
  ``b"F"`` with one file descriptor attached (the worker's end of its task socket);
  the zygote forks and answers the worker's pid as 4 bytes. EOF: the zygote exits.
- stub <-> worker (a socket pair; each message a 4-byte big-endian length and its
  bytes, as ``multiprocessing.connection.Connection`` frames them): first ``b"S"``
  with the slot file's descriptor attached (below), then, through a ``Connection``,
  the stub sends its ``sys.path`` and the pickled serializer (so a
  worker imports what the stub's process can, e.g. a test module's functions, pickled
  by reference), and the worker answers ``b"ready"``; then, read and written on the
  descriptors directly (one read takes whatever the other end wrote),
  batches of tasks, ``msgpack([[slot, task_id, function, args, dep_payloads], ...])``,
  each task answered in order by one byte of ``ResultStatus`` code followed by the
  encoded ``TaskResult`` frame, or by ``SKIPPED`` (one byte) if it was not started.
  A task whose arguments have out-of-band buffers (large ``bytes``, sent by the
  client as frames of their own) has a sixth item, their sizes; their bytes follow
  the batch's frame on the stream, raw, in order (no framing, no copy on either side
  but the kernel's; the worker reads them straight into ``bytes`` objects).
- a small shared file without a name (``WorkerSlots``; a memfd, so nothing is left
  behind whoever dies), one byte per ``slot``, which says whether the
  task sent in that slot is still queued, started, done, or taken back by the stub.
  A worker starts a task only if its byte still says queued, and changes it under a
  POSIX record lock (``lockf``) that the stub also takes to take a queued task back:
  so a cancel of a task that is in a worker's batch but not started is exact (it never
  runs), and the stub knows, when it kills a worker, which of its tasks never started.
  A record lock goes with its process: a killed worker never leaves it held.

The worker is the only holder of its end of the task socket, so EOF on the stub's end
means the process is gone: that is how a kill is confirmed. Each worker leads its own
process group, so a kill (``killpg``) also takes whatever the task started, and (on
Linux) it is killed when the zygote dies; the zygote exits when the stub's process
closes its socket, however that process ends.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "DONE",
    "FRAME_HEADER",
    "QUEUED",
    "READ_SIZE",
    "SKIPPED",
    "SLOTS",
    "STARTED",
    "TAKEN",
    "WorkerSlots",
    "fork_worker",
    "kill_worker",
    "send_frame",
    "take_frame",
    "take_frames",
    "worker_main",
    "write_all",
    "zygote_main",
]

logger = logging.getLogger("futurefsm.scheduler_stub")

_PID = struct.Struct("!i")
_SLOTS_MARK = b"S"
"""The byte the slot file's descriptor travels with (``SCM_RIGHTS``), before the
Connection's first message."""

OWNER_PID_ENV = "FUTUREFSM_SCHEDULER_PID"
"""Set in the zygote's (and so every worker's) environment: the pid of the process
that runs the stub. ``sample_tasks``' gates use it to find the test's gate directory."""


# --------------------------------------------------------------------------- framing

FRAME_HEADER = struct.Struct("!i")
"""A message's length ahead of it, as ``multiprocessing.connection.Connection`` frames
it (the start-up handshake uses a ``Connection``; after it both ends read and write
the descriptor themselves, in the same framing)."""

READ_SIZE = 256 * 1024
"""Bytes asked for per read: whatever the other end wrote, in one system call."""


def take_frames(buffer: bytearray) -> list[bytes]:
    """Take the whole messages off the front of ``buffer`` (the partial last one stays)."""
    messages = []
    position, end = 0, len(buffer)
    unpack = FRAME_HEADER.unpack_from
    with memoryview(buffer) as view:
        while end - position >= 4:
            (size,) = unpack(buffer, position)
            start = position + 4
            if size < 0:
                raise OSError(f"bad frame length {size}")
            if end - start < size:
                break
            position = start + size
            messages.append(view[start:position].tobytes())
    del buffer[:position]
    return messages


def take_frame(buffer: bytearray) -> bytes | None:
    """Take the first whole message off the front of ``buffer``; None if there is none
    yet (what comes after it stays: it may be raw bytes, not messages)."""
    if len(buffer) < 4:
        return None
    (size,) = FRAME_HEADER.unpack_from(buffer)
    if size < 0:
        raise OSError(f"bad frame length {size}")
    end = 4 + size
    if len(buffer) < end:
        return None
    with memoryview(buffer) as view:
        message = bytes(view[4:end])
    del buffer[:end]
    return message


def _take_raw(stream: socket.socket, buffer: bytearray, size: int) -> bytes:
    """``size`` raw bytes: what ``buffer`` holds of them first (taken off it), the
    rest read from ``stream``. Read straight into one ``bytes`` object when
    ``buffer`` holds none of them (the usual case: no copy); else joined once."""
    have = len(buffer)
    if have >= size:
        with memoryview(buffer) as view:
            data = bytes(view[:size])
        del buffer[:size]
        return data
    parts = [bytes(buffer)] if have else []
    buffer.clear()
    need = size - have
    while need:
        chunk = stream.recv(need, socket.MSG_WAITALL)
        if not chunk:
            raise OSError("the stub closed the connection in the middle of a task's buffers")
        parts.append(chunk)
        need -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def send_frame(fd: int, header: bytes, payload: bytes) -> None:
    """Write ``header`` and ``payload``: one write when small, two (no copy of the
    payload) when large."""
    if len(payload) <= _JOIN_BELOW:
        write_all(fd, header + payload)
    else:
        write_all(fd, header)
        write_all(fd, payload)


_JOIN_BELOW = 64 * 1024


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the (blocking) descriptor ``fd``."""
    written = os.write(fd, data)
    if written < len(data):
        with memoryview(data) as view:
            while written < len(data):
                written += os.write(fd, view[written:])


# ----------------------------------------------------------------------- shared slots

SLOTS = 256
"""Slots per worker: at most this many tasks sent to a worker and not yet answered."""

QUEUED, STARTED, DONE, TAKEN = 0, 1, 2, 3
"""A slot's byte: sent, not started / started by the worker / finished by the worker /
taken back by the stub (the worker skips it)."""

SKIPPED = b"\xff"
"""A worker's answer for a task it did not start (its slot said ``TAKEN``)."""


class WorkerSlots:
    """The file of slot bytes shared by the stub and one worker, and its lock.

    The file has no name (a memfd; elsewhere a temporary file unlinked at once): the
    stub hands its descriptor to the worker, so nothing is left behind whichever
    process dies, and when. The lock is a POSIX record lock on the file: it excludes
    the *other process* (the stub's I/O thread is the only thread of its process that
    takes it), and it is released when its holder dies. Every change from ``QUEUED`` is
    made under it.
    """

    __slots__ = ("fd", "memory")

    def __init__(self, fd: int) -> None:
        """Map the slot file open on ``fd`` (this object owns the descriptor)."""
        self.fd = fd
        try:
            self.memory = mmap.mmap(fd, SLOTS)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def create(cls) -> WorkerSlots:
        """A new slot file of ``SLOTS`` bytes, without a name."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("futurefsm-worker-slots", os.MFD_CLOEXEC)
        else:  # no memfd (macOS): a file whose name lives a few microseconds
            fd, path = tempfile.mkstemp(prefix="futurefsm-worker-")
            os.unlink(path)
        try:
            os.ftruncate(fd, SLOTS)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def lock(self) -> None:
        """Take the lock (blocks while the other process holds it)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        """Release the lock."""
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap and close (releases the lock if held)."""
        self.memory.close()
        os.close(self.fd)


# ---------------------------------------------------------------------------- stub side


class _Zygote:
    """The stub process's handle on its zygote (one per process, shared by stubs)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[OWNER_PID_ENV] = str(os.getpid())
        # The zygote must import this package as the stub does, wherever it came from.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        bootstrap = os.path.join(os.path.dirname(__file__), "_zygote.py")
        try:
            self.process = subprocess.Popen(
                [sys.executable, bootstrap, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        self._socket = ours

    def fork(self, worker_end: socket.socket) -> int:
        """Fork a worker that serves ``worker_end``; return its pid."""
        socket.send_fds(self._socket, [b"F"], [worker_end.fileno()])
        answer = b""
        while len(answer) < _PID.size:
            chunk = self._socket.recv(_PID.size - len(answer))
            if not chunk:
                raise OSError("the worker zygote exited")
            answer += chunk
        return int(_PID.unpack(answer)[0])

    def close(self) -> None:
        self._socket.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def fork_worker(serializer_bytes: bytes, timeout: float) -> tuple[int, Connection, WorkerSlots]:
    """Start one worker process; return its pid, the stub's end of its connection and
    the slots shared with it, once the worker said it is ready. Thread-safe; blocks
    (run it off the I/O thread).

    Raises ``OSError`` (or ``TimeoutError``) if no worker could be started.
    """
    global _zygote
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _zygote_lock:
            if _zygote is None or _zygote.process.poll() is not None:
                if _zygote is not None:
                    _zygote.close()
                _zygote = _Zygote()
            try:
                pid = _zygote.fork(theirs)
            except OSError:
                _zygote.close()
                _zygote = None
                raise
    finally:
        theirs.close()  # only the worker holds it now: EOF on ours means it is gone
    slots: WorkerSlots | None = None
    connection: Connection | None = None
    try:
        slots = WorkerSlots.create()
        # The slot file's descriptor first, alone with one byte, then the Connection.
        socket.send_fds(ours, [_SLOTS_MARK], [slots.fd])
        connection = Connection(ours.detach())
        connection.send_bytes(pickle.dumps((list(sys.path), serializer_bytes)))
        if not connection.poll(timeout):
            raise TimeoutError(f"worker process {pid} did not start within {timeout} s")
        if connection.recv_bytes() != b"ready":
            raise OSError(f"worker process {pid} did not start")
    except BaseException:
        kill_worker(pid)
        if connection is not None:
            connection.close()
        else:
            ours.close()
        if slots is not None:
            slots.close()
        raise
    return pid, connection, slots


def kill_worker(pid: int) -> None:
    """SIGKILL a worker and everything in its process group; quiet if already gone."""
    # The group first (what the task started dies too); the pid alone if the worker
    # has not made its group yet. A group or pid that is not ours any more: left alone.
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            continue
        except PermissionError:
            return


# ------------------------------------------------------------------------- zygote side


def zygote_main() -> None:
    """Entry point of the zygote: fork a worker per request until the stub goes away."""
    control = socket.socket(fileno=int(sys.argv[1]))
    # Import what every worker needs once, here, so a fork starts warm.
    import cloudpickle  # noqa: F401
    import msgpack  # noqa: F401

    from . import running  # noqa: F401

    prctl = _prctl()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the stub's to handle
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            message, fds = b"", []
        if not message:
            os._exit(0)
        if message != b"F" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            control.close()
            _run_worker_child(fds[0], prctl)  # never returns
        os.close(fds[0])
        try:
            control.sendall(_PID.pack(pid))
        except OSError:  # the stub's process is gone
            os._exit(0)


def _run_worker_child(fd: int, prctl: Callable[[int, int], int] | None) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # tasks may wait for children
        os.setpgid(0, 0)
        if prctl is not None:
            # Be SIGKILLed when the zygote dies: a worker stuck in a long task cannot
            # notice its connection closing.
            parent = os.getppid()
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the zygote died before that took effect
                os._exit(1)
        code = worker_main(fd)
    except BaseException:
        logger.exception("scheduler stub worker process failed")
    finally:
        os._exit(code)


_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[[int, int], int] | None:
    """libc's ``prctl`` on Linux (loaded once, in the zygote), else None."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------------- worker side


def worker_main(fd: int) -> int:
    """Serve tasks on the connection ``fd`` until it closes; return an exit code.

    Tasks come in batches and run in order. Each is started only if the stub has not
    taken it back (its slot still says ``QUEUED``, checked and changed under the
    lock); each is answered at once, by its result or by ``SKIPPED``.
    """
    import msgpack

    from .running import FunctionCache, run_call

    try:
        with socket.socket(fileno=fd) as stream:
            try:
                mark, fds, _, _ = socket.recv_fds(stream, len(_SLOTS_MARK), 1)
            finally:
                stream.detach()  # the descriptor stays open, for the Connection
    except OSError:
        return 0
    if mark != _SLOTS_MARK or len(fds) != 1:
        return 0  # the stub went away before it handed over the slots
    slots = WorkerSlots(fds[0])
    connection = Connection(fd)
    try:
        path, serializer_bytes = pickle.loads(connection.recv_bytes())
    except (EOFError, OSError):
        return 0
    sys.path[:] = path
    serializer = pickle.loads(serializer_bytes)
    functions = FunctionCache(serializer.loads)
    memory, slots_fd, lockf = slots.memory, slots.fd, fcntl.lockf
    try:
        connection.send_bytes(b"ready")
    except OSError:  # the stub went away (closed) while this worker was starting
        return 0
    # From here on the descriptor is read and written directly (Connection's framing):
    # a read takes every batch the stub wrote, a result is one write.
    pending: deque[list[Any]] = deque()
    buffer = bytearray()
    unpackb, read, header = msgpack.unpackb, os.read, _RESULT_HEADER.pack
    stream = socket.socket(fileno=fd)  # for recv(MSG_WAITALL): raw buffers, whole
    while True:
        try:
            while not pending:
                data = read(fd, READ_SIZE)
                if not data:
                    return 0
                buffer += data
                while True:
                    message = take_frame(buffer)
                    if message is None:
                        break
                    items = unpackb(message)
                    for item in items:
                        if len(item) > 5:  # its raw buffers follow the batch, in order
                            item[5] = [_take_raw(stream, buffer, size) for size in item[5]]
                    pending.extend(items)
        except OSError:
            return 0
        slot, task_id, function, args, dep_payloads, *buffers = pending.popleft()
        lockf(slots_fd, _LOCK_EX)  # slots.lock(), .unlock(): inline, as it is per task
        started = memory[slot] == QUEUED
        if started:
            memory[slot] = STARTED
        lockf(slots_fd, _LOCK_UN)
        try:
            if not started:
                write_all(fd, _SKIPPED_FRAME)
                continue
            status, frame = run_call(
                task_id,
                function,
                args,
                dep_payloads,
                serializer,
                functions,
                buffers[0] if buffers else (),
            )
            # Not under the lock: a stub that still reads STARTED kills this process, whose
            # result it then discards, and it cannot start another task without the lock.
            memory[slot] = DONE
            send_frame(fd, header(len(frame) + 1, status), frame)
        except OSError:  # the stub is gone
            return 0


_LOCK_EX, _LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_UN
_RESULT_HEADER = struct.Struct("!iB")
"""A result's frame length (with its status byte) and its status byte."""
_SKIPPED_FRAME = FRAME_HEADER.pack(1) + SKIPPED
