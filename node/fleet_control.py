"""The launcher's control channel: a Unix socket in the testnet folder, one JSON line each way.

`ledger testnet status|start|stop|restart|kill|pause|resume|partition|heal|delay|loss`
in another terminal connects to `<dir>/control.sock`, sends {"command", "args"} and
prints the answer {"ok", "message", "rows"}.  Only the launcher's user can connect (the
socket is created mode 0600), and the socket exists while the launcher runs.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import socketserver
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from node.fleet import Fleet, FleetError

CONTROL_SOCKET = "control.sock"
MAX_REQUEST = 64 * 1024
COMMAND_TIMEOUT = 60.0  # stopping a node waits up to 15 s for it

# command -> (how many arguments, usage)
COMMANDS: dict[str, tuple[int | None, str]] = {
    "status": (0, "status"),
    "start": (1, "start NODE"),
    "stop": (1, "stop NODE"),
    "restart": (1, "restart NODE"),
    "kill": (1, "kill NODE"),
    "pause": (1, "pause NODE"),
    "resume": (1, "resume NODE"),
    "partition": (None, "partition 0,1 2,3"),
    "heal": (0, "heal"),
    "delay": (2, "delay NODE MS"),
    "loss": (2, "loss NODE PERCENT"),
}


class ControlError(Exception):
    """The control channel could not be used; the message says what to do."""


def socket_path(directory: Path) -> Path:
    return Path(directory) / CONTROL_SOCKET


def carry_out(fleet: Fleet, command: str, args: list[str]) -> dict:
    """One command on the fleet: the answer to send back."""
    if command not in COMMANDS:
        return {"ok": False, "message": f"unknown command {command!r}; commands: {', '.join(COMMANDS)}"}
    count, usage = COMMANDS[command]
    if (count is not None and len(args) != count) or (count is None and len(args) < 2):
        return {"ok": False, "message": f"usage: ledger testnet {usage}"}
    try:
        if command == "status":
            return {"ok": True, "message": "", "rows": fleet.status()}
        if command in ("partition",):
            message = fleet.partition(args)
        elif command == "heal":
            message = fleet.heal()
        else:
            message = getattr(fleet, command)(*args)
    except FleetError as exc:
        return {"ok": False, "message": str(exc)}
    return {"ok": True, "message": message}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            command, args = request["command"], request.get("args", [])
            if not isinstance(command, str) or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ValueError("command is a string and args a list of strings")
            answer = self.server.control.ask(command, args)  # type: ignore[attr-defined]
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "message": f"malformed request: {exc}"}
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the asker left without the answer (a second launcher only checking that one runs)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ControlServer:
    """Serves the control socket in a background thread while the launcher runs.

    Commands are carried out on the launcher's main thread (`serve_pending`, called from
    its loop), never on the socket's threads: a node started from a thread that then ends
    would get SIGTERM from the kernel (PR_SET_PDEATHSIG follows the thread that forked)."""

    def __init__(self, fleet: Fleet, directory: Path, on_command: Callable[[str], None] = lambda message: None):
        self.path = socket_path(directory)
        if len(str(self.path).encode()) >= 100:
            raise ControlError(f"the testnet folder's path is too long for a control socket: {self.path}")
        if self.path.exists():
            if _answers(self.path):
                raise ControlError(f"a testnet launcher already runs in {directory}; stop it first (Ctrl-C there)")
            self.path.unlink()  # left by a launcher that was killed
        old_mask = os.umask(0o177)
        try:
            self.server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old_mask)
        self.server.control = self  # type: ignore[attr-defined]
        self.fleet = fleet
        self.on_command = on_command
        self.pending: queue.Queue[tuple[str, list[str], Future]] = queue.Queue()
        self.thread = threading.Thread(target=self.server.serve_forever, name="testnet-control", daemon=True)

    def ask(self, command: str, args: list[str]) -> dict:
        """From a socket thread: hand the command to the main thread and wait for its answer."""
        answer: Future = Future()
        self.pending.put((command, args, answer))
        try:
            return answer.result(timeout=COMMAND_TIMEOUT)
        except TimeoutError:
            return {"ok": False, "message": "the launcher is busy; try again"}

    def serve_pending(self) -> None:
        """On the main thread: carry out what arrived on the socket since the last call."""
        while True:
            try:
                command, args, answer = self.pending.get_nowait()
            except queue.Empty:
                return
            result = carry_out(self.fleet, command, args)
            if command != "status" and result.get("message"):
                self.on_command(("" if result["ok"] else "refused: ") + result["message"])
            answer.set_result(result)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for serve_forever, which may never have run
            self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def send(directory: Path, command: str, args: list[str], timeout: float = 30.0) -> dict:
    """Ask the launcher running in `directory`; ControlError when none runs there."""
    path = socket_path(directory)
    if not path.exists():
        raise ControlError(f"no testnet is running in {directory} (start one with `ledger testnet --dir {directory}`)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(str(path))
            connection.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise ControlError(f"the testnet launcher in {directory} does not answer ({exc}); is it still running?") from None
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError(f"the testnet launcher in {directory} sent an unreadable answer") from None
