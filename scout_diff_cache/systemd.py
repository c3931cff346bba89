"""Living under systemd: the notify protocol, inherited (socket-activated) sockets, unit files.

Standard library only. Everything here is a no-op when systemd did not set the variables, so the
same process runs the same way from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

#: First file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET: a path or an abstract (`@`) datagram socket."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Notifier:
        watchdog = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        usec = int(watchdog) if watchdog.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def active(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError as error:  # systemd gone or socket unusable: never take the service down
            log.debug("sd_notify failed: %s", error)

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def inherited_sockets(environ: MutableMapping[str, str]) -> list[socket.socket]:
    """The listening sockets systemd passed (LISTEN_FDS for this PID), consumed once."""
    if environ.get("LISTEN_PID") != str(os.getpid()) or not environ.get("LISTEN_FDS", "").isdigit():
        return []
    count = int(environ["LISTEN_FDS"])
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def render_unit(config: Path, repository: Path, state_dir: Path, *, user: bool) -> str:
    """A service unit for this interpreter and config file; `user` for `systemctl --user`."""
    owner = repository.owner() if repository.exists() else "nobody"
    return _unit("", str(config), [f"User={owner}", *_state_directory(state_dir)], user=user)


def render_template(*, user: bool) -> str:
    """`scout-diff-cache@.service`: one proxy per repository, instance NAME reading
    `%E/scout-diff-cache/NAME.ini` (~/.config/… for a user manager, /etc/… for the system one).

    A system instance runs as the user a drop-in names (`systemctl edit scout-diff-cache@NAME`:
    `[Service]` `User=OWNER`), with its state under /var/lib/scout-diff-cache/NAME.
    """
    system = [
        "# User= comes from a drop-in: systemctl edit scout-diff-cache@NAME",
        "StateDirectory=scout-diff-cache/%i",
    ]
    return _unit(" (%i)", "%E/scout-diff-cache/%i.ini", system, user=user)


def _unit(name: str, config: str, system: list[str], *, user: bool) -> str:
    lines = [
        "[Unit]",
        f"Description=scout-diff-cache{name}: git-aware prefix-caching proxy for a local model server",
        "After=network-online.target",
        "Wants=network-online.target",
    ]
    lines += [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={sys.executable} -m scout_diff_cache serve --config {config}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2s",
        "WatchdogSec=30s",
        "TimeoutStopSec=60s",
    ]
    if not user:  # the sandbox needs a system manager; a user manager would need user namespaces
        lines += [
            *system,
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces=yes",
            "LockPersonality=yes",
            "SystemCallArchitectures=native",
        ]
    lines += [
        "NoNewPrivileges=yes",
        "",
        "[Install]",
        "WantedBy=default.target" if user else "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _state_directory(state_dir: Path) -> list[str]:
    """Under /var/lib, systemd creates the state directory for the service's user; else allow it."""
    if state_dir.is_relative_to("/var/lib") and state_dir != Path("/var/lib"):
        return [f"StateDirectory={state_dir.relative_to('/var/lib')}"]
    return [f"ReadWritePaths=-{state_dir}"]


def render_socket(host: str, port: int) -> str:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "\n".join(
        [
            "[Unit]",
            "Description=scout-diff-cache listening socket",
            "",
            "[Socket]",
            f"ListenStream={address}",
            "NoDelay=yes",
            "",
            "[Install]",
            "WantedBy=sockets.target",
            "",
        ]
    )
