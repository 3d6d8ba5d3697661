"""sd_notify for ``Type=notify`` units: READY, STATUS, WATCHDOG and STOPPING messages.

A few lines over a datagram socket instead of a dependency. Everything is a no-op when
the process was not started by systemd (no NOTIFY_SOCKET).
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Talks to systemd when NOTIFY_SOCKET is set; ``watchdog_interval_s`` is half of
    WATCHDOG_USEC (None when no watchdog is asked for)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        if self._socket is None:
            # Non-blocking: a full queue on systemd's side must never stall the event loop.
            kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            self._socket = socket.socket(socket.AF_UNIX, kind)
        with contextlib.suppress(OSError):  # systemd gone or queue full: never fatal
            self._socket.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
