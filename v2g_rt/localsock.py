"""UNIX sockets the controller serves on the box (status, control), and their clients.

Sockets are 0660 and owned by the operator group (`[site] operator_group`), so an
operator reads the status and clears faults without root; the listen backlog fits a
crowd of clients; a client that goes away mid-answer is not an error; a client that
cannot connect says why and what to do instead of printing a traceback.
"""
from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import socket
import socketserver
import struct
import sys
import time
from pathlib import Path

log = logging.getLogger("v2g_rt")

BACKLOG = 512          # 200 clients at once fit; the kernel caps it at net.core.somaxconn
MAX_REQUEST = 64 * 1024
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_reported: set[str] = set()


class ClientError(ConnectionError):
    """Why a client could not talk to the controller: code, message with the remedy."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class LocalServer(socketserver.ThreadingUnixStreamServer):
    request_queue_size = BACKLOG
    daemon_threads = True

    def __init__(self, path: Path, handler, group: str, what: str):
        self.path, self.what = path, what
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            try:                                   # another controller still serving there?
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.5)
                    s.connect(str(path))
                raise OSError(f"a controller already answers on {path}")
            except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
                path.unlink(missing_ok=True)
        super().__init__(str(path), handler)
        self.gid = restrict(path, group)

    def handle_error(self, request, client_address) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, (BrokenPipeError, ConnectionResetError, socket.timeout)):
            log.debug("%s client went away: %s", self.what, e)
        else:
            log.error("ERR_INTERNAL: %s socket: %s: %s", self.what, type(e).__name__, e)

    def close(self) -> None:
        """Close the socket and remove its path (after serve_forever returned)."""
        self.server_close()
        self.path.unlink(missing_ok=True)


def restrict(path: Path, group: str) -> int | None:
    """0660 and the operator group; without the group, owner only (and say so)."""
    gid = group_id(group)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)
            # A deployment (root, or a systemd service) needs the group; a developer's run does not.
            level = logging.WARNING if os.geteuid() == 0 or "INVOCATION_ID" in os.environ else logging.INFO
            if group not in _reported:
                _reported.add(group)
                log.log(level, "ERR_OPERATOR_GROUP: group %r does not exist: the status and control sockets in %s "
                        "are for %s only. Remedy: `groupadd %s` and `usermod -aG %s USER`, or set [site] "
                        "operator_group", group, path.parent, pwd.getpwuid(os.geteuid()).pw_name, group, group)
    except OSError as e:
        log.warning("ERR_OPERATOR_GROUP: cannot give %s to group %r (%s)", path, group, e.strerror)
        return None
    return gid


def peer(sock: socket.socket) -> dict:
    """Who is on the other end: pid, uid, user, gid and supplementary groups (kernel-attested)."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        groups = set(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        groups = set()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"pid": pid, "uid": uid, "user": user, "gid": gid, "groups": groups | {gid}}


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


def request(path: Path, message: dict | None, what: str, timeout: float = 5.0, attempts: int = 6) -> dict:
    """Send one JSON request (None: just read) and return the JSON answer; ClientError says why not."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                # A blocking connect waits (up to SO_SNDTIMEO) for room in a full listen queue;
                # with a Python timeout the socket is non-blocking and gets EAGAIN at once.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
                s.connect(str(path))
                s.settimeout(timeout)
                if message is not None:
                    s.sendall(json.dumps(message).encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return json.loads(b"".join(chunks))
        except (BlockingIOError, InterruptedError) as e:     # EAGAIN: the listen queue is full
            if attempt == attempts - 1:
                raise ClientError(f"ERR_{what.upper()}_BUSY", f"{path}: the controller's {what} socket is busy "
                                  f"({e.strerror}) after {attempts} tries; try again") from None
            time.sleep(delay)
            delay *= 2
        except PermissionError:
            user = pwd.getpwuid(os.geteuid()).pw_name
            raise ClientError("ERR_SOCKET_PERMISSION", f"{path}: permission denied for user {user}. Remedy: add "
                              f"the user to the operator group (`usermod -aG v2g-operator {user}`, or the group "
                              f"named by [site] operator_group), then log in again") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise ClientError(f"ERR_{what.upper()}_UNAVAILABLE", f"no controller answers on {path}: is "
                              f"`v2g-rt run` running? (--socket or --config choose another)") from None
        except socket.timeout:
            raise ClientError(f"ERR_{what.upper()}_UNAVAILABLE", f"{path}: no answer within {timeout:g} s") from None
        except OSError as e:        # EAGAIN is BlockingIOError, retried above
            raise ClientError(f"ERR_{what.upper()}_UNAVAILABLE", f"{path}: {e.strerror or e}") from None
        except ValueError:
            raise ClientError("ERR_INTERNAL", f"{path}: the answer is not JSON") from None
    raise AssertionError("unreachable")
