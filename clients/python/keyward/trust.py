"""Who may serve the agent's socket, checked before anything is sent.

The server must run as root, as this process's effective uid (``keywardd
--dev`` run by the same user), or as the agent's uid (``Client(agent_uid=)``,
else ``$KEYWARD_AGENT_UID``). grpcio makes its own connections and gives no
access to them, so :func:`check_socket` runs once, before the channel is
made, and checks two things:

1. A probe connection made with the ``socket`` module: the kernel says which
   uid serves the socket (``SO_PEERCRED``). Nothing is written on it.
2. The socket's path, with symlinks resolved: every directory from ``/`` down
   and the socket itself are owned by a trusted uid, and no directory is
   writable by its group or others, except a root-owned sticky directory
   such as ``/tmp`` (there only an entry's owner may remove or rename it,
   and the entry below must itself be owned by a trusted uid). Then only a
   trusted uid can put a listener at that path, so grpc's own later
   connections, reconnections after an agent restart included, reach a
   socket a trusted uid placed.

The channel is then made on the resolved path, so a symlink changed later
leads nowhere else.
"""

from __future__ import annotations

import errno
import os
import socket as _socket
import stat
import struct

from .errors import KeywardError, UntrustedSocket, not_running, socket_permission_denied

__all__ = ["AGENT_UID_ENV", "agent_uid_from_env", "check_socket"]

#: The environment variable naming the uid keywardd runs as, when that is
#: neither root nor the user running the client.
AGENT_UID_ENV = "KEYWARD_AGENT_UID"

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def agent_uid_from_env() -> int | None:
    """``$KEYWARD_AGENT_UID`` as a uid; unset or empty is ``None``."""
    value = os.environ.get(AGENT_UID_ENV, "")
    if not value:
        return None
    try:
        uid = int(value.strip(), 10)
    except ValueError:
        uid = -1
    if not 0 <= uid < 2**32:
        raise KeywardError(
            f"{AGENT_UID_ENV}={value!r} is not a uid: set it to the number keywardd runs as "
            f"(e.g. {AGENT_UID_ENV}=998), or unset it"
        )
    return uid


def _trusted_names(agent_uid: int | None) -> str:
    euid = os.geteuid()
    names = ["root"]
    if euid != 0:
        names.append(f"this user (uid {euid})")
    names.append(f"{AGENT_UID_ENV} ({agent_uid})" if agent_uid is not None else f"{AGENT_UID_ENV} (not set)")
    return ", ".join(names[:-1]) + " nor " + names[-1]


def _fix(uid: int) -> str:
    return (
        "Check that socket and its directory (whoever can write there can stand in for keywardd); "
        f"if keywardd really runs as uid {uid}, set {AGENT_UID_ENV}={uid} (or pass agent_uid={uid})"
    )


def check_socket(socket: str, agent_uid: int | None, timeout: float) -> str:
    """Checks who serves ``socket`` and who can replace it (see the module
    docs); returns the path with symlinks resolved, for the channel.

    Raises :class:`~keyward.UntrustedSocket` when a uid that is not trusted
    serves it or could, :class:`~keyward.AgentUnavailable` when nothing
    answers, :class:`~keyward.PermissionDenied` when this user may not
    connect.
    """
    trusted = {0, os.geteuid()} | ({agent_uid} if agent_uid is not None else set())
    real = os.path.realpath(socket)
    uid, pid = _probe(socket, real, timeout)
    if uid not in trusted:
        where = f"pid {pid}" if pid else "pid unknown: another pid namespace"
        raise UntrustedSocket(
            f"refusing the keyward socket {socket}: it is served by uid {uid} ({where}), which is neither "
            f"{_trusted_names(agent_uid)}; nothing was sent to it. {_fix(uid)}",
            uid=uid,
            pid=pid or None,
            path=real,
        )
    _check_path(socket, real, trusted, agent_uid)
    return real


def _probe(socket: str, real: str, timeout: float) -> tuple[int, int]:
    """Connects to ``real`` and returns the server's (uid, pid); sends
    nothing."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(real)
        except FileNotFoundError:
            raise not_running(socket, "no socket at that path") from None
        except ConnectionRefusedError:
            raise not_running(socket, "connection refused") from None
        except PermissionError:
            raise socket_permission_denied(socket) from None
        except _socket.timeout:
            raise not_running(socket, f"no connection within {timeout:g}s") from None
        except OSError as e:
            raise not_running(socket, f"connection failed: {e.strerror or e}") from None
        pid, uid, _gid = _UCRED.unpack(s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))
        return uid, pid
    finally:
        s.close()


def _check_path(socket: str, real: str, trusted: set[int], agent_uid: int | None) -> None:
    """Every directory of ``real`` and the socket itself: owned by a trusted
    uid; directories not writable by group or others unless root-owned and
    sticky."""
    parts = real.split("/")[1:]
    paths = ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    for i, path in enumerate(paths):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise not_running(socket, "no socket at that path") from None
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                raise socket_permission_denied(socket) from None
            raise
        is_socket = i == len(paths) - 1
        if stat.S_ISLNK(st.st_mode):
            # realpath() resolved it a moment ago: it was changed since.
            raise UntrustedSocket(
                f"refusing the keyward socket {socket}: {path} became a symlink while it was checked; "
                "nothing was sent. Check who can change that directory",
                uid=st.st_uid,
                path=path,
            )
        if st.st_uid not in trusted:
            what = "the socket file" if is_socket else "the directory"
            raise UntrustedSocket(
                f"refusing the keyward socket {socket}: {what} {path} is owned by uid {st.st_uid}, which is "
                f"neither {_trusted_names(agent_uid)}; that uid can put its own listener at the socket's path, "
                f"so nothing was sent. {_fix(st.st_uid)}",
                uid=st.st_uid,
                path=path,
            )
        if is_socket or not stat.S_ISDIR(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022 and not (st.st_uid == 0 and mode & stat.S_ISVTX):
            raise UntrustedSocket(
                f"refusing the keyward socket {socket}: the directory {path} is writable by "
                f"{'all users' if mode & 0o002 else 'its group'} (mode {mode:04o}), so another user could put "
                f"its own listener at the socket's path; nothing was sent. Remove that write permission "
                f"(chmod go-w {path}) or move the socket",
                uid=None,
                path=path,
            )
