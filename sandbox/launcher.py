"""The first code of a sandboxed kernel: limits, identity and syscall filter, then exec.

It runs as ``python -I -S -c <this file's source> <json settings> <command...>`` (so it needs
nothing of the project inside the sandbox) and replaces itself with the command, so every
setting holds for the kernel and for every process the kernel starts. Settings (all optional):

- ``limits``: ``{"RLIMIT_AS": bytes, ...}`` set as soft and hard limit (never raised again).
- ``uid``: drop to this uid and gid, with no supplementary groups. Run as root inside a
  bubblewrap sandbox that kept CAP_SETUID/CAP_SETGID for this; after the change the process
  holds no capability, so the kernel cannot read root-only files or regain root.
- ``no_userns``: a seccomp filter refusing new user namespaces (inside one, code could mount
  an unsized tmpfs, RAM outside every limit here).
- ``cwd``: the working directory, entered after the uid change.
- ``pdeathsig``: die with SIGKILL when the thread that started this process ends (set after
  the uid change, which would clear it; it survives exec).

Linux only for ``uid``, ``no_userns`` and ``pdeathsig``; anything the platform lacks is skipped
except the uid change, whose failure stops the launch.
"""

import json
import os
import resource
import sys


def _install_no_userns_filter() -> None:
    import ctypes
    import platform
    import struct

    arch, numbers = {
        "x86_64": (0xC000003E, {"clone": 56, "unshare": 272, "clone3": 435}),
        "aarch64": (0xC00000B7, {"clone": 220, "unshare": 97, "clone3": 435}),
    }.get(platform.machine(), (None, {}))
    if arch is None:
        return
    ld_w_abs, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    clone_newuser = 0x10000000
    # (code, jump if true, jump if false, k); jumps are relative to the next instruction.
    program = [
        (ld_w_abs, 0, 0, 4),  # arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, allow),  # another ABI's numbers mean other calls: not ours to judge
        (ld_w_abs, 0, 0, 0),  # syscall number
        (jge, 7, 0, 0x40000000),  # x32 ABI on x86_64: refuse it all (it would bypass the checks)
        (jeq, 7, 0, numbers["clone3"]),  # its flags sit in memory: ENOSYS, glibc falls back to clone
        (jeq, 1, 0, numbers["unshare"]),
        (jeq, 0, 2, numbers["clone"]),
        (ld_w_abs, 0, 0, 16),  # low half of the first argument: the flags of both
        (jset, 1, 0, clone_newuser),
        (ret, 0, 0, allow),
        (ret, 0, 0, eperm),
        (ret, 0, 0, eperm),
        (ret, 0, 0, enosys),
    ]
    code = b"".join(struct.pack("HBBI", *op) for op in program)
    buffer = ctypes.create_string_buffer(code)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0)
    prog = Program(len(program), ctypes.addressof(buffer))
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter")


def main() -> None:
    settings = json.loads(sys.argv[1])
    command = sys.argv[2:]
    for name, value in settings.get("limits", {}).items():
        resource.setrlimit(getattr(resource, name), (value, value))
    uid = settings.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("sandbox launcher: the uid change did not hold")
    if settings.get("cwd"):
        os.chdir(settings["cwd"])
    if settings.get("no_userns"):
        _install_no_userns_filter()
    if settings.get("pdeathsig"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
