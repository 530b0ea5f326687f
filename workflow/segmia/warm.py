"""Warm worker: local jobs start in milliseconds instead of seconds.

Every rule runs ``python -m segmia <step>``, and on a CPU machine most of a small job is start-up:
importing torch, MONAI, smp, pandas and scikit-learn takes 5-8 s, more than many steps compute.
For a local run (``snakemake --cores N`` on Linux, no GPU) the Snakefile starts one warm worker
that imports all of that once. A job's ``python -m segmia <step>`` then connects to it, and the
worker forks a copy of itself that runs the step exactly as a fresh process would: with the job's
arguments, working directory, environment, umask and its own stdin, stdout and stderr (the
descriptors are passed over the socket), so logs, exit status and outputs are the job's own.
Snakemake still schedules, times and checks every job; only where the process comes from changes.

Without a worker (a cluster job, a GPU machine, ``warm_worker: false`` in the config, or a worker
that has gone away) ``python -m segmia`` runs the step itself. A forked copy is only safe before
any CUDA context exists, so the worker never runs on a machine with a visible GPU; there each job
needs its own context anyway.

The worker exits when Snakemake does (it watches its parent), and takes its running jobs with it.
A job whose client is killed (Snakemake cancels it) is terminated too.

This module imports only the standard library at its top: the client side runs in every job.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: the environment variable through which the Snakefile names the worker's socket to its jobs
ENV = "SEGMIA_WARM"
#: what the worker imports once: every step's implementation and the libraries behind it
PRELOAD = (
    "segmia.cli",
    "segmia.models.job",
    "segmia.models.private",
    "segmia.models.minmax",
    "segmia.models.backdoor",
    "segmia.attacks.job",
    "segmia.report.tables",
    "segmia.report.figures",
    "segmia.report.summary",
    "segmia.report.studies",
    "segmia.report.ablation",
    "monai.networks.nets",
    "segmentation_models_pytorch",
    "opacus",
    "seaborn",
    "tabulate",
    "pandas.io.formats.style",
)
_HEADER = struct.Struct("!I")
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# ---- client: one per job, stdlib only -------------------------------------------------------


def forward(argv: list[str], path: str) -> int | None:
    """Run ``segmia <argv>`` in the worker at ``path``; its exit status, or None when no worker
    answers before the step has started (the caller then runs the step itself)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None
    umask = os.umask(0)
    os.umask(umask)
    request = json.dumps(
        {
            "argv": argv,
            "prog": sys.argv[0],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": umask,
        }
    ).encode()
    payload = _HEADER.pack(len(request)) + request
    reply = sock.makefile("rb")
    try:
        sent = socket.send_fds(sock, [payload], [0, 1, 2])
        sock.sendall(payload[sent:])  # in case the socket took a long environment in parts
        started = reply.readline().split()
    except OSError:
        return None
    if len(started) != 2 or started[0] != b"pid":
        return None  # the worker is stopping: nothing ran
    pid = int(started[1])

    def relay(signum, _frame):  # Snakemake cancelling the job, or Ctrl-C in a terminal
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in _SIGNALS:
        signal.signal(signum, relay)
    finished = reply.readline().split()
    if len(finished) == 2 and finished[0] == b"exit":
        return int(finished[1])
    print(
        f"segmia: the warm worker ({path}) stopped while running this step (process {pid}), so "
        "its outcome is unknown. Rerun the workflow: finished outputs are intact, and Snakemake "
        "reruns this job; set warm_worker: false in the config to run every job in its own "
        "process.",
        file=sys.stderr,
    )
    return 1


# ---- worker ----------------------------------------------------------------------------------


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(fds) != 3 or len(data) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request without its three descriptors")
    (size,) = _HEADER.unpack_from(data)
    body = bytearray(data[_HEADER.size :])
    try:
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("a truncated request")
            body += chunk
        return json.loads(body), fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports


def _run_step(step: Callable[[list[str]], int], request: dict, fds: list[int]) -> None:
    """In the forked child: become the job's process, run its step, exit with its status."""
    import random

    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the job's own descriptors, kept open
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.argv = [request["prog"], *request["argv"]]
    random.seed()  # as a fresh interpreter: seeded from the OS, not the worker's state
    with contextlib.suppress(Exception):  # top and ps -o comm name the step, not the worker
        import ctypes

        name = f"segmia {_step_name(request)}"[:15].encode()
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    code = 1
    try:
        code = step(request["argv"])
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            code = err.code or 0
        else:
            print(err.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):
                stream.flush()
        os._exit(code)


def _step_name(request: dict) -> str:
    return request["argv"][0] if request["argv"] else ""


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} segmia warm worker: {message}", file=sys.stderr, flush=True)


def _alive(conn: socket.socket) -> bool:
    try:
        return bool(conn.recv(1))
    except OSError:
        return False


class Worker:
    """The warm worker's accept-fork-reap loop (one thread; SIGCHLD wakes it)."""

    def __init__(self, path: Path, step: Callable[[list[str]], int], parent: int | None = None):
        self.path = Path(path)
        self.step = step  # segmia.cli.main
        self.parent = parent or os.getppid()  # the worker lives as long as this process
        #: running steps: process -> (its client's connection, step name, start time)
        self.jobs: dict[int, tuple[socket.socket, str, float]] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def _listen(self) -> None:
        # bound under a temporary name and renamed: a client never meets a half-ready worker
        ready = self.path.with_name(self.path.name + f".{os.getpid()}")
        ready.unlink(missing_ok=True)
        self.listener.bind(str(ready))
        self.listener.listen(64)
        os.replace(ready, self.path)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError) as err:
            _say(f"dropped a request ({err})")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as err:  # the client runs the step itself
            _say(f"cannot fork ({err}); the job runs in its own process")
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for signum in (*_SIGNALS, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            clients = (job[0] for job in self.jobs.values())
            for sock in (self.listener, self.wake_r, self.wake_w, conn, *clients):
                sock.close()
            _run_step(self.step, request, fds)
        for fd in fds:
            os.close(fd)
        self.jobs[pid] = (conn, _step_name(request), time.monotonic())
        self.selector.register(conn, selectors.EVENT_READ, pid)
        try:
            conn.sendall(b"pid %d\n" % pid)
        except OSError:
            self._cancel(pid)

    def _cancel(self, pid: int) -> None:
        """The job's client went away (Snakemake killed the job): terminate the step."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        while self.jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.jobs:
                continue
            conn, step, started = self.jobs.pop(pid)
            code = _exit_code(status)
            _say(f"{step} (process {pid}) exited {code} after {time.monotonic() - started:.1f} s")
            if conn.fileno() in self.selector.get_map():
                self.selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.sendall(b"exit %d\n" % code)
            conn.close()

    def _stop(self, *_args) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in _SIGNALS:
            signal.signal(signum, self._stop)
        self._listen()
        _say(f"serving {self.path}")
        try:
            while not self.stopping and os.getppid() == self.parent:
                for key, _ in self.selector.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":  # SIGCHLD: drained here, reaped below
                        with contextlib.suppress(BlockingIOError):
                            while self.wake_r.recv(512):
                                pass
                    elif not _alive(key.fileobj):  # the job's client is gone
                        self.selector.unregister(key.fileobj)
                        self._cancel(key.data)
                self._reap()
        finally:
            self.path.unlink(missing_ok=True)
            self.listener.close()
            for pid in list(self.jobs):
                self._cancel(pid)
            deadline = time.monotonic() + 10
            while self.jobs and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)


def serve(
    path: Path,
    step: Callable[[list[str]], int],
    parent: int | None = None,
    preload: tuple[str, ...] = PRELOAD,
) -> None:
    """Import ``preload`` once, then run ``step(argv)`` (``segmia.cli.main``) for clients at
    ``path`` until the process ``parent`` (default: the parent process) is no longer this
    process's parent."""
    import importlib

    started = time.monotonic()
    for name in preload:
        importlib.import_module(name)
    _say(f"imported {len(preload)} modules in {time.monotonic() - started:.1f} s")
    # what was imported stays out of the cyclic GC: a child's collections then never touch (and
    # copy) the worker's pages
    gc.freeze()
    Worker(path, step, parent).run()


def socket_path(run_id: str) -> str:
    """A short socket path for one Snakemake run (AF_UNIX paths are limited to ~100 bytes)."""
    import tempfile

    return str(Path(tempfile.gettempdir()) / f"segmia-{run_id}.sock")


#: the worker this (Snakemake) process started
_process = None


def start(path: str | None, log: Path, package_root: str) -> None:
    """Start a worker at ``path`` (None: none) that lives as long as this process, importing
    segmia from ``package_root`` as the jobs do; its own messages go to ``log``. Jobs that come
    before it is ready start afresh."""
    import subprocess

    global _process
    if path is None or (_process is not None and _process.poll() is None):
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        _process = subprocess.Popen(
            [sys.executable, "-m", "segmia", "warm-worker", "--socket", path]
            + ["--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # Ctrl-C reaches the jobs through their clients, not here
            env={
                **{k: v for k, v in os.environ.items() if k != ENV},
                "PYTHONPATH": os.pathsep.join(
                    p for p in (package_root, os.environ.get("PYTHONPATH")) if p
                ),
            },
        )


def stop() -> None:
    """Stop the worker :func:`start` started (steps still running are terminated)."""
    global _process
    if _process is not None and _process.poll() is None:
        _process.terminate()
        try:
            _process.wait(timeout=15)
        except Exception:  # noqa: BLE001 - a worker that does not stop is killed
            _process.kill()
    _process = None
