"""The bridge: sandboxed code calls functions that run on the host.

Host side: ``dispatch`` checks the per-sandbox token and runs the registered function (sync or
async); ``SocketBridge`` serves it on a Unix socket in the kernel's private directory.
Sandbox side: ``client_code`` is the code installed in the REPL. Each registered name becomes
a plain function there that blocks until the host answers; a host-side failure raises
``BridgeError`` in the REPL. Two transports share that client:

- ``socket``: one connection per call to the Unix socket (local kernels).
- ``broker``: the call is written as a request file in a broker directory and the answer is
  awaited as a response file; the host polls the directory (E2B, where the host cannot
  connect into the sandbox but can read and write its files).

Wire format: one JSON object each way,
``{"token", "name", "args", "kwargs"}`` -> ``{"result": ...}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

from delm_rlm.errors import BridgeError

import asyncio
import contextlib
import hmac
import inspect
import json
import keyword
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

MAX_MESSAGE = 256 * 1024 * 1024  # one request or reply; batched prompts can be large


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"bridge name {name!r} is not a valid Python identifier")
    if name.startswith("_") or name in {"BridgeError", "context", "docs", "df"}:
        raise ValueError(f"bridge name {name!r} is reserved; choose a public name without a leading '_'")


async def dispatch(tools: dict[str, Callable[..., Any]], token: str, request: Any) -> dict[str, Any]:
    """Answer one bridge request: token check, call, JSON-serializable reply."""
    if not isinstance(request, dict) or not hmac.compare_digest(
        str(request.get("token", "")).encode(), token.encode()
    ):
        return {"error": "refused: the bridge call did not carry this sandbox's token"}
    name = request.get("name")
    fn = tools.get(name) if isinstance(name, str) else None
    if fn is None:
        return {"error": f"no host function named {name!r} is registered"}
    args, kwargs = request.get("args", []), request.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return {"error": "malformed bridge request: args must be a list and kwargs a dict"}
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
    except Exception as err:  # the failure belongs to the sandboxed caller, as BridgeError
        return {"error": f"{type(err).__name__}: {err}"}
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        return {"error": f"the result of {name}() is not JSON-serializable: {err}"}
    return {"result": value}


Handler = Callable[[Any], Awaitable[dict[str, Any]]]


class SocketBridge:
    """Serves bridge calls on a Unix socket (mode 0600) from the host's event loop.

    A call whose caller goes away (its cell interrupted, its kernel killed) is cancelled, and
    `close` cancels every call still running: a host function may be minutes of model time,
    and nobody is left to read its answer."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._calls: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # No umask dance: it is process-wide and other sandboxes start concurrently. The
        # socket lives in a 0700 directory, so the moment before chmod exposes nothing.
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_MESSAGE)
        os.chmod(self.path, 0o600)

    @property
    def calls_in_flight(self) -> int:
        return len(self._calls)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._calls.add(me)
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
            except ValueError:
                reply: dict[str, Any] | None = {"error": "malformed bridge request: not one JSON line"}
            else:
                reply = await self._answer_while_connected(reader, request)
            if reply is not None:
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the caller went away (e.g. its cell was interrupted)
        except asyncio.CancelledError:
            # `close` cancelled it: end quietly. This task is asyncio's per-connection task,
            # whose done-callback logs a cancelled one as an unhandled error.
            pass
        finally:
            if me is not None:
                self._calls.discard(me)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer_while_connected(self, reader: asyncio.StreamReader, request: Any) -> dict[str, Any] | None:
        """The handler's reply, or None when the caller hung up first (the call is cancelled).
        The client sends one line and then only reads, so end-of-file means it is gone."""
        call = asyncio.ensure_future(self._handler(request))
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                await asyncio.wait({call, hangup} if not hangup.done() else {call},
                                   return_when=asyncio.FIRST_COMPLETED)
                if call.done():
                    return call.result()
                if not hangup.cancelled() and hangup.exception() is None and hangup.result():
                    continue  # stray bytes after the request line: not a hang-up; keep waiting on the call
                return None
        finally:
            for child in (call, hangup):
                child.cancel()
            await asyncio.gather(call, hangup, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Python 3.11's Server.close leaves running connections alone: cancel them here.
        running = [t for t in self._calls if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# ---- sandbox side ---------------------------------------------------------------------------

_CLIENT = r'''
def __delm_install_bridge(transport, address, token):
    import json, os, socket, sys, time, types, uuid

    class BridgeError(Exception):
        """A host function called through the bridge failed, or the call was refused."""

    def send_socket(payload):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(address)
            s.sendall(payload + b"\n")
            chunks = []
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            s.close()
        return b"".join(chunks)

    def send_broker(payload):
        rid = uuid.uuid4().hex
        tmp = os.path.join(address, rid + ".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
        os.rename(tmp, os.path.join(address, rid + ".req"))  # atomic: the host never sees half
        answer = os.path.join(address, rid + ".resp")
        delay = 0.002
        while not os.path.exists(answer):
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        with open(answer, "rb") as f:
            data = f.read()
        os.remove(answer)
        return data

    send = send_socket if transport == "socket" else send_broker

    def call(name, args, kwargs):
        __tracebackhide__ = True  # IPython shows the caller's line, not the bridge's insides
        try:
            payload = json.dumps({"token": token, "name": name, "args": list(args), "kwargs": kwargs})
        except (TypeError, ValueError) as err:
            raise BridgeError(f"arguments of {name}() must be JSON-serializable: {err}") from None
        try:
            raw = send(payload.encode())
        except OSError as err:
            raise BridgeError(f"the host bridge is unreachable: {err}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise BridgeError(f"the host sent no valid answer to {name}()") from None
        if "error" in reply:
            raise BridgeError(reply["error"])
        return reply["result"]

    module = types.ModuleType("_delm_bridge")
    module.call, module.BridgeError, module.address = call, BridgeError, address
    sys.modules["_delm_bridge"] = module
    return BridgeError

BridgeError = __delm_install_bridge(%(transport)r, %(address)r, %(token)r)
del __delm_install_bridge
'''

_STUB = r'''
def %(name)s(*args, **kwargs):
    """Runs `%(name)s` on the host through the bridge (JSON arguments and result)."""
    __tracebackhide__ = True
    import _delm_bridge
    return _delm_bridge.call(%(name)r, args, kwargs)
'''


def client_code(transport: Literal["socket", "broker"], address: str, token: str) -> str:
    """Code that installs the bridge client and ``BridgeError`` in the REPL."""
    return _CLIENT % {"transport": transport, "address": address, "token": token}


def stubs_code(names: list[str]) -> str:
    """Code that defines one REPL function per registered host function."""
    for name in names:
        check_name(name)
    return "".join(_STUB % {"name": name} for name in names)
