"""The sandbox: real harness programs are scored right, and hostile programs are contained and scored as
failures without harming the evaluator or the machine. Limits are tight so the file runs in seconds."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from semalign.errors import SemalignError
from semalign.evaluation import sandbox
from semalign.evaluation.sandbox import UID_RANGE, check_humaneval, check_mbpp, run_many, run_program

FIXTURES = Path(__file__).parents[1] / "fixtures"
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
    result = run_program("while True: pass", timeout_s=10.0, memory_mb=256, cpu_s=1)
    assert (result.status, result.returncode) == ("killed", -9) and result.seconds < 5.0


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


@root_only
@pytest.mark.parametrize("target", ["keep.txt", "new.txt"])
def test_writing_outside_its_directory_fails(tmp_path, target):
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    keep.chmod(0o644)
    result = run_program(f"open({str(tmp_path / target)!r}, 'w').write('overwritten')", **TIGHT)
    assert result.status == "failed" and "PermissionError" in result.stderr_tail
    assert keep.read_text() == "original" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


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
    sources = ["import time; time.sleep(2)", "import time; time.sleep(2); raise SystemExit(3)", "print(7)"]
    start = time.monotonic()
    results = run_many(sources, max_workers=2, **TIGHT)
    assert [(r.status, r.returncode) for r in results] == [("passed", 0), ("failed", 3), ("passed", 0)]
    assert results[2].stdout_tail == "7\n" and time.monotonic() - start < 3.5  # one at a time: > 4 s


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
        and "SemalignError: sandbox cannot create network and pid namespaces" in done.stderr
    )
    assert not marker.exists()


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
    assert [runs[k][0] for k in ("escape", "locked_folder", "loop")] == ["passed", "passed", "timeout"]
    assert report["left"] == [] and _pids_of(uid) == []
