"""rlplat.envs.sandbox: one test per limit, each with real hostile code. Every one checks that the
program was contained, that the result says which limit stopped it, and that the next call works.

A protection the machine cannot give (``SandboxResult.missing``: no namespaces, not root) skips the
test that needs it, naming the reason; ``test_unprivileged_run_reports_what_is_missing`` checks the
unprivileged mode itself by running the sandbox as uid 65534.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from rlplat.envs.sandbox import PROTECTIONS, Limits, Sandbox, SandboxResult

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(wall_s=2.0, cpu_s=1, memory_mb=128, file_mb=1.0, processes=8, output_bytes=4096)
NOBODY = 65534


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS)


def run_python(sandbox: Sandbox, code: str) -> SandboxResult:
    """``code`` run as the python tool runs it: this interpreter, isolated mode."""
    return sandbox.run([sys.executable, "-I", "-c", textwrap.dedent(code)], expose=(sys.base_prefix, sys.prefix))


def assert_next_call_works(sandbox: Sandbox) -> None:
    result = run_python(sandbox, "print(6 * 7)")
    assert result.ok and result.stdout == "42\n", result


def require(result: SandboxResult, protection: str) -> None:
    """Skip when the machine cannot give ``protection`` (the result says why)."""
    if protection in result.missing:
        pytest.skip(f"sandbox protection '{protection}' not available here: {result.missing[protection]}")


def live_processes_of(uid: int) -> list:
    """Host pids of processes (zombies excluded) owned by ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def test_an_ordinary_program_runs_with_every_protection_named(sandbox):
    result = run_python(sandbox, "import sys; print('hi'); print('warn', file=sys.stderr)")
    assert result.ok and result.stdout == "hi\n" and result.stderr == "warn\n", result
    assert set(result.missing) <= set(PROTECTIONS)
    if os.geteuid() == 0:
        assert result.missing == {}, "as root every protection should be in force"


def test_infinite_loop_stops_at_the_cpu_limit(sandbox):
    result = run_python(sandbox, "while True: pass")
    assert result.limits == ("cpu",) and result.exit_code < 0, result
    assert result.seconds < LIMITS.wall_s, "the CPU limit, not the wall clock, should have stopped it"
    assert_next_call_works(sandbox)


def test_hang_stops_at_the_wall_clock():
    fast = Sandbox(Limits(wall_s=0.5, cpu_s=1))
    result = run_python(fast, "import time; time.sleep(60)")
    assert result.limits == ("timeout",) and result.exit_code == -9, result
    assert 0.5 <= result.seconds < 1.5
    assert_next_call_works(fast)


def test_memory_bomb_stops_at_the_address_space_limit(sandbox):
    result = run_python(sandbox, "blocks = [bytearray(2**20) for _ in range(4096)]  # 4 GiB")
    assert "memory" in result.limits and result.exit_code != 0, result
    assert "MemoryError" in result.stderr
    assert_next_call_works(sandbox)


def test_fork_bomb_is_capped_and_leaves_no_process(sandbox):
    code = """
        import os, time
        print(os.getuid(), flush=True)
        first = os.getpid()
        for _ in range(10):  # 1024 processes if nothing capped them
            os.fork()
        if os.getpid() != first:
            time.sleep(60)
    """
    result = run_python(sandbox, code)
    require(result, "user")
    assert "processes" in result.limits, result
    assert "Resource temporarily unavailable" in result.stderr
    assert result.seconds < LIMITS.wall_s, "the sleeping children must not keep the call alive"
    uid = int(result.stdout.split()[0])
    assert uid != os.getuid() and live_processes_of(uid) == []
    assert_next_call_works(sandbox)


def test_processes_that_leave_the_session_are_killed_too(sandbox):
    code = """
        import os, time
        print(os.getuid(), flush=True)
        if os.fork() == 0:
            os.setsid()  # out of the process group a group kill would reach
            time.sleep(60)
    """
    result = run_python(sandbox, code)
    require(result, "processes")
    assert result.ok, result
    if "user" not in result.missing:
        assert live_processes_of(int(result.stdout.split()[0])) == []
    assert_next_call_works(sandbox)


@pytest.fixture
def open_to_all():
    """A world-writable directory any uid can reach (pytest's tmp_path is closed to other uids), as Ray's session directories are."""
    path = Path(tempfile.mkdtemp(prefix="rlplat-open-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def _others_can_enter(path: Path) -> bool:
    """Every directory from / down to ``path`` lets any uid pass (o+x)."""
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def test_writing_outside_the_working_directory_fails(sandbox, open_to_all):
    code = f"""
        import os
        print(os.getcwd())
        with open("inside.txt", "w") as f:
            f.write("fine")
        for target in [{str(open_to_all / "escaped.txt")!r}, {str(REPO / "escaped.txt")!r}, "/tmp/escaped.txt"]:
            try:
                with open(target, "w") as f:
                    f.write("escaped")
                print("WROTE", target)
            except OSError as exc:
                print("refused", exc.strerror)
    """
    result = run_python(sandbox, code)
    require(result, "filesystem")
    assert result.ok, result
    lines = result.stdout.splitlines()
    # The checkout may sit below a directory only root may enter (a clone in `mktemp -d`): the
    # sandbox's own uid is then stopped before the read-only mount is reached.
    repo = "Read-only file system" if _others_can_enter(REPO) else "Permission denied"
    assert lines[1:] == ["refused Read-only file system", f"refused {repo}", "refused Read-only file system"], result.stdout
    assert not (open_to_all / "escaped.txt").exists() and not (REPO / "escaped.txt").exists()
    assert not os.path.exists("/tmp/escaped.txt")
    assert not os.path.exists(lines[0]), "the private working directory must be removed afterwards"
    assert_next_call_works(sandbox)


def test_the_parents_environment_is_out_of_reach(sandbox, monkeypatch):
    secret = "rlplat-sandbox-secret-3141"
    monkeypatch.setenv("RLPLAT_SANDBOX_SECRET", secret)
    code = """
        import os
        print(sorted(os.environ))
        for pid in [os.getppid(), 1] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                print(open(f"/proc/{pid}/environ").read())
            except OSError as exc:
                print("refused", pid, exc.strerror)
    """
    result = run_python(sandbox, code)
    assert result.ok, result
    assert result.stdout.splitlines()[0] == "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    if result.missing.keys() >= {"processes", "user"}:
        pytest.skip(f"the parent's /proc/<pid>/environ is readable here: {result.missing['processes']}")
    assert secret not in result.stdout
    assert_next_call_works(sandbox)


def test_network_connections_fail(sandbox):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        code = f"""
            import socket
            for host in ["127.0.0.1", "1.1.1.1"]:
                try:
                    socket.create_connection((host, {server.getsockname()[1]}), timeout=1).close()
                    print("CONNECTED", host)
                except OSError as exc:
                    print("refused", exc.strerror)
        """
        result = run_python(sandbox, code)
        require(result, "network")
        assert result.ok and result.stdout.splitlines() == ["refused Network is unreachable"] * 2, result
        with pytest.raises(BlockingIOError):
            server.accept()  # no connection ever arrived
    assert_next_call_works(sandbox)


def test_megabytes_of_output_are_cut_and_stopped(sandbox):
    result = run_python(sandbox, "import sys\nwhile True: sys.stdout.write('x' * 2**20)")
    assert result.limits == ("output",) and result.exit_code == -9, result
    assert result.stdout == "x" * LIMITS.output_bytes
    assert result.seconds < 1.0, "the program must be stopped once over the cap, not at the wall clock"
    assert_next_call_works(sandbox)


def test_big_files_stop_at_the_file_size_limit(sandbox):
    result = run_python(sandbox, "open('big.bin', 'wb').write(b'x' * 2**21)  # 2 MiB")
    assert result.limits == ("file_size",) and result.exit_code == 1, result
    assert "File too large" in result.stderr
    assert_next_call_works(sandbox)


def test_bad_code_and_bad_commands_are_results_not_exceptions(sandbox):
    broken = run_python(sandbox, "def (:")
    assert broken.exit_code == 1 and broken.limits == () and "SyntaxError" in broken.stderr and not broken.ok
    missing = sandbox.run(["/no/such/program"])
    assert missing.exit_code is None and "/no/such/program" in missing.error and not missing.ok
    assert_next_call_works(sandbox)


def _python_for_nobody() -> str | None:
    """An interpreter uid 65534 can run (this one may sit under /root), or None."""
    for exe in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([exe, "-c", "pass"], user=NOBODY, group=NOBODY, extra_groups=[],
                                   capture_output=True, timeout=10)
        except OSError:
            continue
        if probe.returncode == 0:
            return exe
    return None


UNPRIVILEGED = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox", {path!r})
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
box = sandbox.Sandbox(sandbox.Limits(wall_s=5, cpu_s=2))
checks = {{"network": "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)",
           "filesystem": "open('/tmp/rlplat-unprivileged-escape', 'w')"}}
out = {{}}
for name, code in checks.items():
    r = box.run([sys.executable, "-I", "-c", code])
    out[name] = {{"missing": r.missing, "exit_code": r.exit_code, "stderr": r.stderr[-300:], "error": r.error}}
print(json.dumps(out))
"""


def test_unprivileged_run_reports_what_is_missing():
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as uid 65534 (the suite itself runs unprivileged)")
    exe = _python_for_nobody()
    if exe is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    # A copy uid 65534 can read: the checkout may sit in a directory only root may enter (mktemp -d).
    readable = tempfile.mkdtemp(prefix="rlplat-sandbox-")
    try:
        os.chmod(readable, 0o755)
        for name in ("sandbox.py", "sandbox_launch.py"):
            shutil.copy(REPO / "rlplat" / "envs" / name, readable)
            os.chmod(os.path.join(readable, name), 0o644)
        script = UNPRIVILEGED.format(path=os.path.join(readable, "sandbox.py"))
        proc = subprocess.run([exe, "-I", "-c", script], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                              capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(readable, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for name, got in out.items():
        assert not got["error"], got
        assert "not root" in got["missing"]["user"]  # no uid of its own: no process cap, and it says so
        if name not in got["missing"]:  # in force (a user namespace): the attempt must have failed
            assert got["exit_code"] == 1 and ("unreachable" in got["stderr"] or "Read-only" in got["stderr"]), got
    assert not os.path.exists("/tmp/rlplat-unprivileged-escape") or "filesystem" in out["filesystem"]["missing"]
