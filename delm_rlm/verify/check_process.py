"""The verifier kernel's side of a code check: one forked interpreter per check.

`KERNEL_MODULE` is installed once in the verifier's kernel as the module `_delm_checks`.
The kernel is then a warm parent that holds the corpus and the usual imports and never runs
check code itself: for each check it forks a child, which runs the check with its own
copy-on-write copy of everything and writes what it printed back through a pipe, then
exits. Whatever a check changes (`builtins.print`, `json._rt`, `__main__.docs`, a module
attribute) dies with its child, so no check can see or change what another left; forking a
warm process costs a millisecond or two where a new kernel costs about a second.

The child, before the check runs: starts its own session (so the parent can kill the
group), points fd 1 at the output pipe and fd 3 at a status pipe, sends stdin and stderr to
/dev/null, closes every other descriptor (the kernel's message sockets included), works in
a fresh empty directory, drops the workspace from `sys.path` (a file a check left there is
never imported by a later one) and gives up its capabilities (root inside a user namespace
could otherwise trace the parent). The parent is a child subreaper and not dumpable: after
a check, every process the check started, even in a new session, is killed, and no check
can attach to the parent or write its memory.

A request (JSON) names the code, the slice variables, the replayed host tools, the timeout,
the output cap and whether to run the counterfactual as well: the same code again in a
second child where `chunk`, `docs`, `context` and `df` are empty (`__main__` too). The
parent prints one line, `MARKER` + JSON, with each run's output and how it ended.
"""

from __future__ import annotations

MARKER = "@@delm-check-result@@ "

KERNEL_MODULE = r'''
import builtins, ctypes, gc, io, json, os, select, shutil, signal, sys, tempfile, threading, time

MARKER = %(marker)r
MAIN = sys.modules["__main__"].__dict__
WORKSPACE = os.path.realpath(os.getcwd())
STATUS_FD = 3
STATUS_CAP = 16384
REAPING = [None]  # the thread still reaping the last check's children
# Imported here once, so checks find them in memory (fast, and never read from a file a
# check may have planted).
PRELOAD = ("collections", "re", "json", "math", "statistics", "itertools", "functools",
           "string", "datetime", "decimal", "fractions", "operator", "heapq", "bisect",
           "textwrap", "unicodedata", "random", "csv", "io", "difflib", "numpy", "pandas")
for _name in PRELOAD:
    try:
        __import__(_name)
    except Exception:
        pass

try:
    LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    LIBC = None

PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 4, 24, 28
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock.
SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80


def prctl(option, arg):
    if LIBC is None:
        return -1
    return LIBC.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a check come back here, to be killed
prctl(PR_SET_DUMPABLE, 0)  # no check may trace this process or open its /proc/<pid>/mem


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def effective_capabilities():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return -1  # unknown: drop what can be dropped


def drop_privileges():
    """No capabilities in the child, and none regained by exec (root in a user namespace
    holds CAP_SYS_PTRACE there). Best effort: a step the system refuses is skipped."""
    if LIBC is None:
        return
    if os.getuid() != 0 and os.geteuid() != 0 and not effective_capabilities():
        prctl(PR_SET_NO_NEW_PRIVS, 1)  # nothing to drop; nothing to gain through exec either
        return
    prctl(PR_SET_SECUREBITS, SECUREBITS)
    for cap in range(64):
        prctl(PR_CAPBSET_DROP, cap)
    try:
        LIBC.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)())
    except Exception:
        pass
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def children():
    """Direct children of this process (orphans of a check are reparented here), from
    /proc/self/task/*/children, or by reading every process's parent where the kernel
    does not offer that file."""
    found = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        tasks = []
    listed = False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
            listed = True
        except (OSError, ValueError):
            pass
    if listed:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(me):
            found.add(int(entry))
    return found


def kill_new(before):
    """Kill and reap every child not in `before`, repeatedly: a killed process's own
    children are reparented here and appear in the next round."""
    for _ in range(100):
        extra = children() - before
        if not extra:
            return
        for pid in extra:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in extra:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass


class Discard(io.TextIOBase):
    """Where a replayed agent's own prints go: only the value it set is printed."""

    def write(self, text):
        return len(text)

    def writable(self):
        return True


def inside(path, root):
    try:
        full = os.path.realpath(path or ".")
    except (OSError, ValueError):
        return False
    return full == root or full.startswith(root + os.sep)


def empty_frame(frame):
    try:
        return frame.iloc[0:0].copy()
    except Exception:
        return frame


def namespace(request, counterfactual):
    """The names a check sees: the corpus (or, for the counterfactual, empty views of
    it), the task's slice and the replayed tools; nothing of any other check."""
    variables = dict(request["vars"])
    context, docs, df = MAIN.get("context"), MAIN.get("docs"), MAIN.get("df")
    if counterfactual:
        context, docs = "", []
        df = empty_frame(df) if df is not None else None
        for name in ("chunk_doc", "chunk_start", "chunk_end", "chunk_doc_end"):
            if name in variables:
                variables[name] = 0
        MAIN.update(context=context, docs=docs, df=df)
        chunk = ""
    elif "chunk_doc" in variables and request.get("chunk_setup"):
        # The task's slice as the agent's REPL built it (chunking.CHUNK_SETUP_CODE): a packed
        # chunk spans documents, a table chunk rows with every column (chunk_df).
        built = {"context": context, "docs": docs, "df": df, "chunk_doc_end": variables["chunk_doc"],
                 "chunk_rows": False, **variables}
        exec(request["chunk_setup"], built)
        chunk = built["chunk"]
        variables.setdefault("chunk_df", built.get("chunk_df"))
        variables.setdefault("chunk_docs", built.get("chunk_docs"))
    elif "chunk_doc" in variables:
        chunk = docs[variables["chunk_doc"]][variables["chunk_start"]:variables["chunk_end"]]
    else:
        chunk = context
    ns = {"__name__": "__check__", "__builtins__": builtins}
    for name, value in (("context", context), ("docs", docs), ("df", df)):
        if value is not None:
            ns[name] = value
    if context is not None or docs is not None:
        ns["chunk"] = chunk
    for tool in request["tools"]:
        if tool in MAIN:
            ns[tool] = MAIN[tool]
    ns.update(variables)
    return ns


def error_text(exc):
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<check>":
            line = tb.tb_lineno
        tb = tb.tb_next
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text, line


def child(request, counterfactual, out_w, status_w, workdir):
    exit_now, write, close = os._exit, os.write, os.close  # held before the check can replace them
    status = {"error": "the check did not finish"}
    try:
        os.setsid()
        os.dup2(out_w, 1)
        os.dup2(status_w, STATUS_FD)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 2)
        os.closerange(STATUS_FD + 1, 1 << 20)
        os.chdir(workdir)
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        out = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        err = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        sys.stdout = sys.__stdout__ = out
        sys.stderr = sys.__stderr__ = err
        dropped = [p for p in sys.path if p in ("", ".") or inside(p, WORKSPACE)]
        sys.path[:] = [p for p in sys.path if p not in dropped]
        for path in dropped:  # (clearing the whole cache would free, so copy, thousands of pages)
            sys.path_importer_cache.pop(path, None)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # IPython's display() would write to the kernel's message sockets, closed here.
        builtins.display = lambda *objects, **_: print(*objects)
        drop_privileges()
        ns = namespace(request, counterfactual)
        try:
            parts = request["parts"]
            if len(parts) == 1:
                exec(compile(parts[0], "<check>", "exec"), ns)
            else:  # an agent's cells replayed: their own prints are not the value
                head, body, tail = parts
                exec(compile(head, "<check>", "exec"), ns)
                sys.stdout = Discard()
                try:
                    exec(compile(body, "<check>", "exec"), ns)
                finally:
                    sys.stdout = out
                exec(compile(tail, "<check>", "exec"), ns)
            status = {"ok": True}
        except BaseException as exc:
            text, line = error_text(exc)
            status = {"error": text[:2000], "line": line}
        try:
            out.flush()
        except BaseException:
            pass
    except BaseException as exc:
        status = {"error": f"the check's interpreter failed to start: {type(exc).__name__}: {exc}"[:2000]}
    finally:
        try:
            write(STATUS_FD, json.dumps(status).encode()[:STATUS_CAP])
            # Both pipes at their end tell the parent the result is complete: it need not
            # wait for this process to be torn down.
            close(1)
            close(STATUS_FD)
        finally:
            exit_now(0)


def read_some(fd, into, cap):
    """Read what `fd` has into `into` (kept up to just over `cap`): 1 if data came, 0 at
    the end of the stream, -1 when nothing is there now (a non-blocking read)."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return -1
    except OSError:
        return 0
    if not data:
        return 0
    if len(into) <= cap:
        into += data
    return 1


class Run:
    """One forked interpreter running a check, seen from the parent."""

    def __init__(self, request, counterfactual):
        self.cap = request["cap"]
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        self.workdir = tempfile.mkdtemp(prefix="delm-check-")
        gc.freeze()  # the child's collector then leaves the parent's objects (and pages) alone
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            for fd in (out_r, out_w, status_r, status_w):
                os.close(fd)
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        if pid != 0:
            gc.unfreeze()
        if pid == 0:
            try:
                child(request, counterfactual, out_w, status_w, self.workdir)
            finally:
                os._exit(1)
        os.close(out_w)
        os.close(status_w)
        self.pid, self.out_r, self.status_r = pid, out_r, status_r
        self.open = {out_r, status_r}
        self.out, self.status = bytearray(), bytearray()
        self.deadline = time.monotonic() + request["timeout"]
        self.timed_out = self.too_long = self.exited = self.done = False
        self.wait_status = None
        self.stopped = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def fds(self):
        return list(self.open) + ([self.pidfd] if self.pidfd is not None else [])

    def take(self, fd):
        """Handle `fd` being ready: output, status, or (pidfd) the child's exit."""
        if fd == self.pidfd:
            self.exited = True
        elif read_some(fd, self.out if fd == self.out_r else self.status,
                       self.cap if fd == self.out_r else STATUS_CAP) == 0:
            self.open.discard(fd)

    def check(self, now):
        """Decide whether this run is over: exited (then drain the pipes; a process it
        started may hold them open), over the output cap, or past its deadline."""
        if self.done:
            return
        if len(self.out) > self.cap:
            self.too_long = self.done = True
        elif now >= self.deadline:
            self.timed_out = self.done = True
        if self.pidfd is None and not self.exited:
            reaped, found = os.waitpid(self.pid, os.WNOHANG)
            if reaped == self.pid:
                self.exited, self.wait_status = True, found
        if not self.open and not self.done:  # both pipes closed: the result is complete
            self.done = True
        if self.exited and not self.done:
            for fd in (self.out_r, self.status_r):
                os.set_blocking(fd, False)
                into, cap = (self.out, self.cap) if fd == self.out_r else (self.status, STATUS_CAP)
                while read_some(fd, into, cap) == 1 and len(self.out) <= self.cap:
                    pass
            self.too_long = len(self.out) > self.cap
            self.done = True

    def stop(self):
        """Kill the child and its session (if not reaped yet) and close its pipes, once;
        `reap` then waits for it."""
        if self.stopped:
            return
        self.stopped = True
        if self.wait_status is None:  # not reaped, so `pid` (and its group) is still the child's
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
        for fd in (self.out_r, self.status_r) + ((self.pidfd,) if self.pidfd is not None else ()):
            try:
                os.close(fd)
            except OSError:
                pass
        self.done = True

    def reap(self):
        """Wait for the (killed or exited) child and remove its directory. A child that has
        reported is already done for the check: tearing its memory down takes a few
        milliseconds, so `run` lets a thread wait for that after answering."""
        if self.wait_status is None:
            try:
                self.wait_status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                self.wait_status = 0
        shutil.rmtree(self.workdir, ignore_errors=True)

    def report(self):
        """The run's result; call it after `reap` when the child may have ended without one
        (its exit code is then part of the answer)."""
        code = os.waitstatus_to_exitcode(self.wait_status or 0)
        result = {"out": bytes(self.out[:self.cap]).decode("utf-8", "replace"),
                  "timed_out": self.timed_out, "too_long": self.too_long,
                  "error": None, "line": None, "ended": None}
        if self.timed_out or self.too_long:
            return result
        try:
            reported = json.loads(bytes(self.status).decode("utf-8", "replace"))
        except ValueError:
            reported = None
        if not isinstance(reported, dict) or not (reported.get("ok") is True or isinstance(reported.get("error"), str)):
            result["ended"] = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        elif reported.get("ok") is not True:
            result["error"] = reported["error"]
            result["line"] = reported.get("line") if isinstance(reported.get("line"), int) else None
        return result


def succeeded(result):
    return not (result["timed_out"] or result["too_long"] or result["error"] or result["ended"])


def run(request_json):
    """Run the check, and its counterfactual beside it (both forked at once), then kill
    whatever they started; print the one result line."""
    request = json.loads(request_json)
    previous = REAPING[0]
    if previous is not None:
        previous.join()  # the last check's children are gone before this one starts
    before = children()
    runs = []
    try:
        try:
            runs.append(Run(request, False))
            if request["counterfactual"]:
                runs.append(Run(request, True))
        except OSError as exc:  # no process could be started: the verifier's trouble, not the check's
            for r in runs:
                r.stop()
                r.reap()
            print(MARKER + json.dumps({"failed": f"could not start a check interpreter: {exc}"}), flush=True)
            return
        while not all(r.done for r in runs):
            now = time.monotonic()
            for r in runs:
                r.check(now)
            real = runs[0]
            if real.done and not succeeded(real.report()) and len(runs) > 1:
                runs[1].done = True  # the real run failed: the counterfactual is moot
            live = [r for r in runs if not r.done]
            if not live:
                break
            watch = [fd for r in live for fd in r.fds()]
            wait = min(r.deadline for r in live) - time.monotonic()
            if any(r.pidfd is None for r in live):
                wait = min(wait, 0.002)
            for fd in select.select(watch, [], [], max(0.0, wait))[0]:
                for r in live:
                    if fd in r.fds():
                        r.take(fd)
    except BaseException:
        for r in runs:
            r.stop()
            r.reap()
        kill_new(before)
        raise
    finally:
        for r in runs:
            r.stop()
        kill_new(before | {r.pid for r in runs})

    def finish():
        for r in runs:
            r.reap()
        kill_new(before)  # what they started elsewhere is reparented here once they are gone

    try:
        for r in runs:
            if not r.status or r.timed_out or r.too_long:  # ended without a result: its exit says how
                r.reap()
        real = runs[0].report()
        empty = runs[1].report() if len(runs) > 1 and succeeded(real) else None
        print(MARKER + json.dumps({"real": real, "empty": empty}), flush=True)
    except BaseException:
        finish()
        raise
    reaper = threading.Thread(target=finish, daemon=True)
    reaper.start()
    REAPING[0] = reaper
'''


def install_code() -> str:
    """The cell that installs `KERNEL_MODULE` in the verifier's kernel as `_delm_checks`."""
    source = KERNEL_MODULE % {"marker": MARKER}
    return (
        "def __delm_install_checks(source):\n"
        "    import sys, types\n"
        "    module = types.ModuleType('_delm_checks')\n"
        "    exec(compile(source, '<delm-checks>', 'exec'), module.__dict__)\n"
        "    sys.modules['_delm_checks'] = module\n"
        f"__delm_install_checks({source!r})\n"
        "del __delm_install_checks\n"
    )
