"""What the service's user can reach: `check`, run as root, must not hide a file only root can read.

The packages run the agent and the collector as the system user ``runlab``. An admin runs ``check`` as root,
where every file is readable, so a password file left at 0600 root (or a directory at 0700) passes the check
and fails the service. Here a forked child becomes that user — its uid, gid and supplementary groups — and
tries what the service will do: open each file for reading, find each directory writable. Access control
lists, a parent directory it cannot enter and a group it is not in are all seen, because the kernel decides.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Sequence

SERVICE_USER = "runlab"


def default_user() -> str | None:
    """The service's user when this runs as root and that user exists, else None (nothing to check)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER


def problems_as(user: str, readable: Sequence[str], writable_dirs: Sequence[str] = ()) -> list[str]:
    """One line per path ``user`` cannot read (files) or write into (directories); [] when all is well.

    Only root can take on another user; as anyone else the list is empty (the caller is the user itself).
    """
    if os.geteuid() != 0:
        return []
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return [f"user {user} does not exist"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only plain system calls, then _exit
        out: list[str] = []
        try:
            os.close(r)
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            for path in readable:
                try:
                    with open(path, "rb") as f:
                        f.read(1)
                except OSError as e:
                    out.append(f"cannot read {path} ({e.strerror})")
            for d in writable_dirs:
                target = d
                while not os.path.exists(target) and os.path.dirname(target) != target:
                    target = os.path.dirname(target)  # not there yet: it must be creatable
                if not os.access(target, os.W_OK | os.X_OK):
                    out.append(f"cannot write into {target}" + ("" if target == d else f" (to create {d})"))
        except BaseException as e:  # report anything: the child must never return into the parent's code
            out.append(f"could not check as {user}: {e}")
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    found: list[str] = json.loads(b"".join(chunks) or b"[]")
    return found


def fix_hint(user: str) -> str:
    return (f"the service runs as user {user}: give it the file's group and mode 0640 "
            f"(chgrp {user} FILE && chmod 0640 FILE), and its directories at least 0710 with group {user}")
