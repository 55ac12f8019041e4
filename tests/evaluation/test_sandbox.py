"""The sandbox: real harness programs are scored right, programs that end early are scored as failures,
and hostile programs are contained, see nothing of the host and leave nothing behind. Limits are tight so
the file runs in seconds."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from semalign.errors import SemalignError
from semalign.evaluation import sandbox
from semalign.evaluation.sandbox import (
    UID_RANGE,
    check_humaneval,
    check_mbpp,
    humaneval_program,
    run_many,
    run_program,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
PROJECT = Path(__file__).resolve().parents[2]
TIGHT = {"timeout_s": 3.0, "memory_mb": 256, "max_processes": 16}
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the uid-drop guarantees hold for a root evaluator")


def _rows(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def _pids_of(uid):
    """Processes whose real uid is `uid`, read from /proc."""
    pids = []
    for entry in os.scandir("/proc"):
        try:
            status = Path(entry.path, "status").read_text() if entry.name.isdigit() else ""
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(line.split()[1] == str(uid) for line in status.splitlines() if line.startswith("Uid:")):
            pids.append(int(entry.name))
    return pids


def test_humaneval_canonical_solution_passes_and_a_wrong_one_fails():
    problem = _rows("humaneval.jsonl")[0]
    prompt, test, entry_point = problem["prompt"], problem["test"], problem["entry_point"]
    good = check_humaneval(prompt, problem["canonical_solution"], test, entry_point, timeout_s=3.0)
    wrong = check_humaneval(prompt, "    return False\n", test, entry_point, timeout_s=3.0)
    assert (good.passed, good.status, good.returncode) == (True, "passed", 0)
    assert (wrong.passed, wrong.status) == (False, "failed") and "AssertionError" in wrong.stderr_tail


# Wrong HumanEval completions that end the program early with exit code 0. Each scored "passed" when any
# exit code 0 counted; each still exits 0 when run plainly as a script (checked below).
EARLY_EXITS = {
    "sys_exit_in_function": "    import sys\n    sys.exit(0)\n",
    "os_exit_in_function": "    import os\n    os._exit(0)\n",
    "raise_systemexit_in_function": "    raise SystemExit\n",
    "unittest_main": "    return False\n\n\nimport unittest\nunittest.main()\n",
    "atexit_os_exit": "    return False\n\n\nimport atexit, os\natexit.register(os._exit, 0)\n",
    "main_guard_exit": "    return False\n\n\nif __name__ == '__main__':\n    raise SystemExit(0)\n",
    "settrace_replaces_check": (
        "    return False\n\n\nimport sys\n\n\ndef skip(frame, event, arg):\n"
        "    if event == 'line' and 'check' in frame.f_globals:\n"
        "        frame.f_globals['check'] = lambda candidate: None\n"
        "    return skip\n\n\nsys.settrace(skip)\nsys._getframe().f_trace = skip\n"
    ),
    "fake_markers_on_every_fd": (
        "    return False\n\n\nimport os\nfor fd in range(1, 10):\n    try:\n"
        "        os.write(fd, b'0' * 32 + b'\\n')\n    except OSError:\n        pass\nos._exit(0)\n"
    ),
}


@pytest.mark.parametrize("completion", EARLY_EXITS.values(), ids=EARLY_EXITS.keys())
def test_a_program_that_exits_before_its_tests_complete_fails(tmp_path, completion):
    problem = _rows("humaneval.jsonl")[0]
    parts = problem["prompt"], completion, problem["test"], problem["entry_point"]
    plain = subprocess.run([sys.executable, "-I", "-c", humaneval_program(*parts)], cwd=tmp_path, timeout=30)
    # 10 s: a loaded machine must not turn a failure into a timeout.
    result = check_humaneval(*parts, timeout_s=10.0)
    assert plain.returncode == 0
    assert (result.passed, result.status) == (False, "failed")


TRACE_HOOKS = {
    "sys_settrace": "sys.settrace(tracer)",
    "threading_settrace": "threading.settrace(tracer)",
    "sys_setprofile": "sys.setprofile(tracer)",
    "ctypes_PyEval_SetTrace": "ctypes.pythonapi.PyEval_SetTrace(c_tracer, None)",
}
TRACED = """
import ctypes, sys, threading
events = []
def tracer(frame, event, arg):
    events.append(event)
    return tracer
c_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
c_tracer = c_type(lambda *args: events.append(args[2]) or 0)
try:
    {install}
except RuntimeError as refused:
    print("RuntimeError:", refused, file=sys.stderr)
def traced():
    return 1
thread = threading.Thread(target=traced)
thread.start()
thread.join()
traced()
print(len(events))
"""


@pytest.mark.parametrize("install", TRACE_HOOKS.values(), ids=TRACE_HOOKS.keys())
def test_trace_and_profile_hooks_are_refused(tmp_path, install):
    source = TRACED.format(install=install)
    plain = subprocess.run([sys.executable, "-I", "-c", source], cwd=tmp_path, capture_output=True, text=True)
    result = run_program(source, **TIGHT)
    assert plain.returncode == 0 and int(plain.stdout) > 0  # the hook sees events where it is allowed
    assert result.passed and result.stdout_tail == "0\n"
    event = "sys.setprofile" if "profile" in install else "sys.settrace"
    assert (
        f"RuntimeError: the sandbox forbids {event}: a trace hook could skip the tests" in result.stderr_tail
    )


def test_the_program_runs_as_a_module_not_as_main():
    result = run_program("import sys\nprint(__name__, sys.modules[__name__].__file__)", **TIGHT)
    name, path = result.stdout_tail.split()
    assert result.passed and name == "program" and Path(path).name == "program.py"


def test_the_marker_is_out_of_the_programs_reach_and_printing_it_does_not_pass(monkeypatch):
    marker = secrets.token_hex(16)
    monkeypatch.setattr(sandbox, "_marker", lambda: marker)
    # Everything the program can read without knowing the harness: argv, environment, its files.
    snoop = (
        "import os, sys\n"
        "print(sys.argv, dict(os.environ), open('/proc/self/cmdline', 'rb').read())\n"
        "print(open('/proc/self/environ', 'rb').read())\n"
        "for top in ('.', '/tmp', '/dev/shm'):\n"
        "    for folder, _, files in os.walk(top):\n"
        "        for name in files:\n"
        "            print(name, open(os.path.join(folder, name), 'rb').read())\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    snooped = run_program(snoop, **TIGHT)
    # Knowing the marker does not help either: what the program prints is not the channel.
    forged = run_program(f"print({marker!r})\nimport sys\nsys.stderr.write({marker!r})\nsys.exit(0)", **TIGHT)
    assert (snooped.status, snooped.returncode) == ("failed", 0) and "program.py" in snooped.stdout_tail
    assert marker not in snooped.stdout_tail + snooped.stderr_tail
    assert (forged.status, forged.returncode) == ("failed", 0) and forged.stdout_tail == marker + "\n"
    assert run_program("print(1)", **TIGHT).passed  # with the same marker


def test_stdin_is_empty():
    result = run_program("try:\n    input()\nexcept EOFError:\n    print('eof')", **TIGHT)
    assert result.passed and result.stdout_tail == "eof\n"
    unguarded = run_program("input()", **TIGHT)
    assert unguarded.status == "failed" and "EOFError" in unguarded.stderr_tail


@pytest.mark.parametrize(
    "target", ["/etc/shadow", "/etc/passwd", str(PROJECT / "params.yaml")], ids=["shadow", "passwd", "params"]
)
def test_host_files_cannot_be_read(target):
    result = run_program(f"print(open({target!r}).read())", **TIGHT)
    assert Path(target).is_file()
    assert result.status == "failed" and result.stdout_tail == ""
    assert f"FileNotFoundError: [Errno 2] No such file or directory: {target!r}" in result.stderr_tail


def test_the_program_sees_only_system_folders_python_and_its_own():
    paths = ["/", "/root", "/etc", "/home", str(PROJECT), os.getcwd()]
    source = (
        "import json, os\n"
        f"print(json.dumps({{p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in {paths!r}}}))"
    )
    result = run_program(source, **TIGHT)
    seen = json.loads(result.stdout_tail)
    prefixes = [Path(prefix) for prefix in (sys.prefix, sys.base_prefix)]
    system = {path.lstrip("/") for path in sandbox._SYSTEM_DIRS if os.path.lexists(path)}
    assert result.passed
    assert seen["/"] == sorted(system | {"dev", "proc", "tmp"} | {prefix.parts[1] for prefix in prefixes})
    # /root holds at most the way to the Python installation (pyenv keeps it there), none of the host's files.
    under_root = sorted({prefix.parts[2] for prefix in prefixes if prefix.parts[1] == "root"})
    assert seen["/root"] == (under_root or None)
    assert [seen[path] for path in paths[2:]] == [None] * 4


def test_host_processes_are_invisible():
    source = (
        "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        f"os.kill({os.getpid()}, 0)"
    )
    result = run_program(source, **TIGHT)
    assert result.status == "failed" and result.stdout_tail == "[1]\n"
    assert "ProcessLookupError" in result.stderr_tail


def test_files_in_tmp_dev_shm_and_ipc_do_not_outlive_the_program():
    name, key = f"semalign-probe-{secrets.token_hex(4)}", 1 + secrets.randbelow(2**30)
    source = (
        "import ctypes\n"
        f"for folder in ('/tmp', '/dev/shm'):\n    open(f'{{folder}}/{name}', 'w').write('x')\n"
        f"assert ctypes.CDLL(None).shmget({key}, 4096, 0o1600) >= 0\n"  # IPC_CREAT | 0600
    )
    result = run_program(source, **TIGHT)
    assert result.passed, result.stderr_tail
    assert not Path("/tmp", name).exists() and not Path("/dev/shm", name).exists()
    assert all(int(line.split()[0]) != key for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:])


def test_tmp_holds_at_most_max_file_bytes():
    source = "for i in range(3):\n    open(f'/tmp/{i}', 'wb').write(bytes(2**19))\n"
    result = run_program(source, **TIGHT, max_file_bytes=2**20)
    assert result.status == "failed" and "No space left on device" in result.stderr_tail


def test_mbpp_fixture_passes_and_setup_code_runs_before_the_asserts():
    row = _rows("mbpp.jsonl")[0]
    assert check_mbpp(row["code"], row["test_list"], row["test_setup_code"], timeout_s=3.0).passed
    code, tests = "def area(r):\n    return math.pi * r * r", ["assert abs(area(1) - 3.14159) < 1e-5"]
    assert check_mbpp(code, tests, "import math", timeout_s=3.0).passed
    missing = check_mbpp(code, tests, "", timeout_s=3.0)
    assert missing.status == "failed" and "NameError" in missing.stderr_tail


def test_program_runs_isolated_in_a_fresh_directory_that_is_deleted():
    source = (
        "import os, sys\nopen('scratch.txt', 'w').write('mine')\n"
        "print(os.getpid(), os.getcwd(), sys.flags.isolated, sorted(os.environ), sep='|')\n"
    )
    result = run_program(source, **TIGHT)
    pid, cwd, isolated, env = result.stdout_tail.strip().split("|")
    assert result.passed and int(pid) != os.getpid() and isolated == "1"
    assert Path(cwd).name == "work" and Path(cwd).parent.parent == Path(tempfile.gettempdir())
    assert not Path(cwd).parent.exists()
    assert env == str(["HOME", "LANG", "PATH", "TMPDIR"])


def test_a_deep_tree_of_folders_is_still_deleted():
    # Deeper than the recursion limit of a recursive delete, and its paths longer than PATH_MAX (4096).
    source = "import os\nprint(os.getcwd())\nfor _ in range(2100):\n    os.mkdir('d')\n    os.chdir('d')\n"
    result = run_program(source, **TIGHT)
    root = Path(result.stdout_tail.strip()).parent
    assert result.passed and root.name.startswith("semalign-sandbox-") and not root.exists()


def test_infinite_loop_is_stopped_at_the_wall_clock_timeout():
    result = run_program("while True: pass", timeout_s=1.0, memory_mb=256)
    assert (result.passed, result.status) == (False, "timeout")
    assert 1.0 <= result.seconds < 1.0 + sandbox._GRACE_S


def test_cpu_limit_kills_a_busy_program_before_the_wall_clock():
    # 'killed', not 'timeout': the CPU limit struck first (a long wall clock, for loaded machines).
    result = run_program("while True: pass", timeout_s=30.0, memory_mb=256, cpu_s=1)
    assert (result.status, result.returncode) == ("killed", -9)


def test_huge_allocation_fails_with_memory_error():
    result = run_program("x = bytearray(10**11)", **TIGHT)
    assert result.status == "failed" and "MemoryError" in result.stderr_tail


@root_only
def test_fork_bomb_stops_at_the_process_limit_and_leaves_no_process():
    result = run_program("import os\nprint(os.getuid(), flush=True)\nwhile True: os.fork()", **TIGHT)
    uid = int(result.stdout_tail.split()[0])
    assert result.status == "failed" and "BlockingIOError" in result.stderr_tail and result.seconds < 3.0
    assert uid in UID_RANGE and _pids_of(uid) == []


@root_only
@pytest.mark.parametrize("then", ["pass", "while True: pass"], ids=["exits", "times_out"])
def test_processes_that_leave_the_session_die_with_the_program(then):
    source = (
        "import os, time\nprint(os.getuid(), flush=True)\n"
        f"if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n{then}\n"
    )
    result = run_program(source, timeout_s=1.5, memory_mb=256)
    assert result.status == ("passed" if then == "pass" else "timeout")
    assert _pids_of(int(result.stdout_tail.split()[0])) == []


@root_only
def test_program_cannot_signal_its_parent_or_the_evaluator():
    source = (
        "import os\nos.kill(os.getppid(), 9)\n"
        f"try:\n    os.kill({os.getpid()}, 9)\nexcept OSError as e:\n    print(type(e).__name__)\n"
        "print('alive')\n"
    )
    result = run_program(source, **TIGHT)
    assert result.passed and result.stdout_tail.split() in (
        ["ProcessLookupError", "alive"],
        ["PermissionError", "alive"],
    )


@pytest.mark.parametrize("target", ["keep.txt", "new.txt"])
def test_writing_outside_its_directory_fails(tmp_path, target):
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    keep.chmod(0o666)
    result = run_program(f"open({str(tmp_path / target)!r}, 'w').write('overwritten')", **TIGHT)
    # Not even a world-writable host file can be named: the host's /tmp is not in the program's view.
    assert result.status == "failed" and "FileNotFoundError" in result.stderr_tail
    assert keep.read_text() == "original" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_the_python_installation_is_read_only():
    target = Path(sys.prefix, "lib", f"semalign-probe-{secrets.token_hex(4)}")
    result = run_program(f"open({str(target)!r}, 'w')", **TIGHT)
    assert result.status == "failed" and "OSError: [Errno 30] Read-only file system" in result.stderr_tail
    assert not target.exists()


def test_filling_the_disk_stops_at_the_file_size_limit():
    source = "with open('big', 'wb') as f:\n    for _ in range(1000):\n        f.write(bytes(2**20))\n"
    result = run_program(source, **TIGHT, max_file_bytes=2**20)
    assert result.status == "failed" and "File too large" in result.stderr_tail and result.seconds < 3.0


def test_stdout_flood_is_capped_on_disk_and_in_memory():
    result = run_program(
        "while True: print('x' * 10000)", **TIGHT, max_file_bytes=2**20, max_output_bytes=1000
    )
    assert result.status == "failed" and "File too large" in result.stderr_tail
    assert len(result.stdout_tail) == 1000 and set(result.stdout_tail) <= {"x", "\n"}


def test_network_is_unreachable_even_on_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_program(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", **TIGHT
        )
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status == "failed" and "Network is unreachable" in result.stderr_tail


def test_run_many_keeps_order_and_runs_in_parallel():
    # Each sleeper prints when it ran; overlapping spans prove parallelism however loaded the machine is.
    sleep = "import time\nprint(time.time())\ntime.sleep(1)\nprint(time.time())\n"
    sources = [sleep, sleep + "raise SystemExit(3)", "print(7)"]
    results = run_many(sources, max_workers=2, **{**TIGHT, "timeout_s": 10.0})
    assert [(r.status, r.returncode) for r in results] == [("passed", 0), ("failed", 3), ("passed", 0)]
    (start_0, end_0), (start_1, end_1) = ([float(t) for t in r.stdout_tail.split()] for r in results[:2])
    assert results[2].stdout_tail == "7\n" and start_0 < end_1 and start_1 < end_0


def test_run_many_keeps_finished_results_when_one_cannot_start(monkeypatch):
    real = sandbox.run_program

    def refuse_second(source, **limits):
        if source == "second":
            raise SemalignError("sandbox cannot create namespaces")
        return real(source, **limits)

    monkeypatch.setattr(sandbox, "run_program", refuse_second)
    results = run_many(["print(1)", "second", "print(3)"], **TIGHT)
    assert [r.status for r in results] == ["passed", "error", "passed"]
    assert results[1].stderr_tail == "sandbox cannot create namespaces" and results[2].stdout_tail == "3\n"


@pytest.mark.parametrize("bad", [{"timeout_s": 0}, {"memory_mb": 16}, {"cpu_s": 0}, {"max_processes": 0}])
def test_bad_limits_are_refused(bad):
    with pytest.raises(SemalignError, match=next(iter(bad))):
        run_program("print(1)", **{**TIGHT, **bad})


@root_only
def test_root_without_cap_sys_admin_refuses_instead_of_running_unconfined(tmp_path):
    marker = tmp_path / "ran"
    program = f"open({str(marker)!r}, 'w')"
    script = f"from semalign.evaluation.sandbox import run_program\nrun_program({program!r})\n"
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-sys_admin", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (
        done.returncode == 1
        and "SemalignError: sandbox cannot create network, pid and IPC namespaces" in done.stderr
    )
    assert not marker.exists()


# Installs a seccomp filter that fails every mount(2) with EPERM (x86_64 numbers), then runs a program.
NO_MOUNT_SCRIPT = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from semalign.evaluation.sandbox import run_program

class Rule(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]

class Filter(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("rules", ctypes.POINTER(Rule))]

# load the syscall number; if mount (165): fail with EPERM, else allow
rules = (Rule * 4)(
    Rule(0x20, 0, 0, 0), Rule(0x15, 0, 1, 165), Rule(0x06, 0, 0, 0x50001), Rule(0x06, 0, 0, 0x7FFF0000)
)
args = [ctypes.c_ulong(22), ctypes.c_ulong(2), ctypes.byref(Filter(4, rules)), ctypes.c_ulong(0),
        ctypes.c_ulong(0)]
assert ctypes.CDLL(None).prctl(*args) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
run_program(sys.argv[2])
"""


@root_only
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter uses x86_64 syscall numbers")
def test_a_machine_that_forbids_mounts_gets_an_error_not_an_unconfined_run(tmp_path):
    ran = tmp_path / "ran"
    done = subprocess.run(
        [sys.executable, "-c", NO_MOUNT_SCRIPT, sandbox._LIB, f"open({str(ran)!r}, 'w')"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and not ran.exists()
    assert (
        "SemalignError: sandbox cannot give the program a private filesystem view "
        "([Errno 1] set flags of /: Operation not permitted); it needs mount namespaces" in done.stderr
    )


def _system_python():
    """A Python >= 3.11 outside root-only folders, so that an unprivileged evaluator can run it."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if (
            Path(candidate).exists()
            and subprocess.run([candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"]).returncode
            == 0
        ):
            return candidate
    return None


USER_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from semalign.evaluation.sandbox import run_program
limits = dict(timeout_s=2.0, memory_mb=256, max_processes=16)
ns = "import os; print(os.getpid(), os.readlink('/proc/self/ns/net'), os.readlink('/proc/self/ns/pid'))"
runs = {
    "namespaces": run_program(ns, **limits),
    "fork_bomb": run_program("import os\\nwhile True: os.fork()", **limits),
    "escape": run_program(
        "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(60)", **limits
    ),
    "locked_folder": run_program("import os\\nos.mkdir('d')\\nopen('d/f', 'w')\\nos.chmod('d', 0)", **limits),
    "loop": run_program("while True: pass", **limits),
    "view": run_program(
        "import os\\nprint(os.path.exists('/etc'), [p for p in os.listdir('/proc') if p.isdigit()], "
        "os.getcwd())",
        **limits,
    ),
    "early_exit": run_program("import os\\nos._exit(0)\\nassert False", **limits),
}
print(json.dumps({"own": [os.readlink('/proc/self/ns/net'), os.readlink('/proc/self/ns/pid')],
                  "runs": {k: [r.status, r.stdout_tail, r.stderr_tail] for k, r in runs.items()},
                  "left": os.listdir(os.environ["TMPDIR"])}))
"""


@root_only
def test_unprivileged_evaluator_still_gets_namespaces_limits_and_cleanup():
    python = _system_python()
    if python is None:
        pytest.skip("no Python >= 3.11 outside root-only folders to run an unprivileged evaluator")
    uid = UID_RANGE.start - 1 - secrets.randbelow(1 << 20)  # unprivileged, and not a sandbox uid
    home = Path(tempfile.mkdtemp(prefix="semalign-test-evaluator-"))
    os.chown(home, uid, uid)
    try:
        done = subprocess.run(
            [python, "-I", "-c", USER_SCRIPT, sandbox._LIB],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd=home,
            env={"PATH": "/usr/bin:/bin", "TMPDIR": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    runs = report["runs"]
    pid, net, pid_ns = runs["namespaces"][1].split()
    assert runs["namespaces"][0] == "passed" and pid == "1"
    assert net != report["own"][0] and pid_ns != report["own"][1]
    assert runs["fork_bomb"][0] == "failed" and "BlockingIOError" in runs["fork_bomb"][2]
    assert [runs[k][0] for k in ("escape", "locked_folder", "loop", "early_exit")] == [
        "passed",
        "passed",
        "timeout",
        "failed",
    ]
    etc, pids, cwd = runs["view"][1].split()
    assert runs["view"][0] == "passed" and etc == "False" and pids == "['1']" and cwd.startswith(str(home))
    assert report["left"] == [] and _pids_of(uid) == []
