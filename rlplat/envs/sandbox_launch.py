"""Child side of ``rlplat.envs.sandbox``: namespaces, mounts, limits and uid, then the program.

Run as ``python -I -S sandbox_launch.py CONFIG_JSON STATUS_FD`` in a fresh session (its own process
group). Standard library only and imports nothing of rlplat: it runs in a fresh, single-threaded
interpreter, so the namespace and mount calls are never made in a forked copy of a threaded parent
(``preexec_fn`` is unsafe there).

CONFIG_JSON keys: ``argv`` (list of str), ``env`` (the program's whole environment), ``workdir``
(the only writable directory), ``uid`` (int: the unprivileged uid and gid to run as, root only;
null: keep this process's), ``expose`` (directories the program must be able to read although an
ancestor is closed to ``uid``, e.g. an interpreter under ``/root``), ``limits`` (``cpu_s``,
``memory_bytes``, ``file_bytes``, ``processes``).

Processes: this launcher (outside) -> init (process 1 of a new pid namespace; reaps orphans) ->
the program. JSON lines on STATUS_FD: ``{"missing": {protection: reason}}`` for each protection not
in force (``network``, ``filesystem``, ``processes``, ``user``), then ``{"exit": status}`` (negative:
the signal) when the program ends, or ``{"error": ...}`` when the sandbox or the ``exec`` failed.
The program never holds STATUS_FD (close-on-exec).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 0x20, 0x400, 0x800, 0x1000
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 0x4000, 0x40000, 0x200000, 0x1000000

# Per-mount options a bind remount must repeat: in a user namespace they are locked, and a remount
# that drops one fails with EPERM.
KEPT_OPTIONS = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
READ_ONLY = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID  # nosuid: no setuid binary regains root

_libc = ctypes.CDLL(None, use_errno=True)


def _call(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _call(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _mounts():
    """(mount point, per-mount options) of every mount this process sees, parents first."""
    unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)  # noqa: E731
    with open("/proc/self/mountinfo") as f:
        fields = [line.split() for line in f]
    return [(unescape(f[4]), f[5].split(",")) for f in fields]


def _map_ids() -> None:
    """Map this uid/gid into the user namespace just created (else files it writes have no owner)."""
    uid, gid = os.geteuid(), os.getegid()
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _read_only_root(workdir: str) -> None:
    """Every mount read-only and nosuid, except ``workdir`` (bound onto itself, writable)."""
    mounts = _mounts()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    _mount(workdir, workdir, None, MS_BIND)
    for point, options in mounts:
        flags = READ_ONLY
        for option in options:
            flags |= KEPT_OPTIONS.get(option, 0)
        try:
            _mount(None, point, None, flags)
        except FileNotFoundError:  # under a mount that hides it: unreachable by any path
            continue
    _mount(None, workdir, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)


def _closed_ancestor(path: str, uid: int) -> str | None:
    """The top-most ancestor of ``path`` that ``uid`` cannot traverse (no o+x, not its own), or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        st = os.stat(ancestor)
        if st.st_uid != uid and not st.st_mode & 0o001:
            return ancestor
    return None


def _expose(paths, uid: int) -> None:
    """Make each of ``paths`` readable by ``uid`` without opening the rest of its closed ancestor:
    the ancestor is covered by an empty read-only tmpfs holding bind mounts of just those paths."""
    by_ancestor: dict = {}
    for path in paths:
        ancestor = _closed_ancestor(path, uid)
        if ancestor is not None:
            by_ancestor.setdefault(ancestor, []).append(path)
    for ancestor, inside in by_ancestor.items():
        # Held open across the tmpfs mount, which hides the real paths.
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inside]
        _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for path, fd in zip(inside, fds):
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)
        _mount(None, ancestor, None, READ_ONLY | MS_NODEV)


def _set_limits(limits: dict, cap_processes: bool) -> None:
    cpu = limits["cpu_s"]
    # The hard limit one second later: SIGKILL for a program that ignores SIGXCPU.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cap_processes:  # counts every process of the uid: only meaningful for a uid of its own
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)


def _namespaces(cfg: dict) -> dict:
    """New network, mount and pid namespaces, the read-only mounts, the exposed paths; returns
    {protection: reason} for those not in force. The pid namespace holds the children made from here on."""
    missing = {}
    root = os.geteuid() == 0
    try:
        if not root:  # unprivileged, a user namespace is what grants the right to make the others
            _call(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            _map_ids()
        _call(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    except OSError as exc:
        missing["network"] = missing["filesystem"] = missing["processes"] = f"no namespaces ({exc})"
        return missing
    try:
        _read_only_root(cfg["workdir"])
    except OSError as exc:
        missing["filesystem"] = f"read-only remount failed ({exc})"
    if cfg["uid"] is not None:
        _expose(cfg["expose"], cfg["uid"])
    return missing


def _init(cfg: dict, status: int, missing: dict) -> None:
    """Process 1 of the pid namespace (when there is one): a /proc of its own, then the program as
    its child; it reaps every orphan until the program exits, reports the program's exit status and
    exits, upon which the kernel kills whatever the program left in the namespace."""
    if "processes" not in missing:
        try:  # a /proc that shows the namespace's processes only: no other environ, no other cmdline
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as exc:
            missing["processes"] = f"no /proc of its own ({exc})"
    if cfg["uid"] is None:
        missing["user"] = "not root: runs as the caller's uid" if os.geteuid() != 0 else "no free uid in this user namespace"
    _report(status, {"missing": missing})
    program = os.fork()
    if program == 0:
        _exec(cfg, status)
    while True:
        pid, wait_status = os.waitpid(-1, 0)
        if pid == program:
            _report(status, {"exit": os.waitstatus_to_exitcode(wait_status)})
            os._exit(0)


def _exec(cfg: dict, status: int) -> None:
    """Limits, working directory and uid of the program, then exec it (never returns)."""
    try:
        uid = cfg["uid"]
        _set_limits(cfg["limits"], cap_processes=uid is not None)
        os.chdir(cfg["workdir"])
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.set_inheritable(status, False)  # close-on-exec: the program never holds the status pipe
        os.execvpe(cfg["argv"][0], cfg["argv"], cfg["env"])
    except Exception as exc:
        _report(status, {"error": f"cannot run {cfg['argv'][0]!r}: {type(exc).__name__}: {exc}"})
    os._exit(127)


def _report(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def main(argv) -> None:
    cfg, status = json.loads(argv[1]), int(argv[2])
    try:
        missing = _namespaces(cfg)
    except Exception as exc:  # a setup failure, not the program's: say so rather than run it unprotected
        _report(status, {"error": f"sandbox setup failed: {type(exc).__name__}: {exc}"})
        os._exit(126)
    init = os.fork()  # process 1 of the new pid namespace
    if init == 0:
        try:
            _init(cfg, status, missing)
        finally:
            os._exit(126)
    os.waitpid(init, 0)


if __name__ == "__main__":
    main(sys.argv)
