"""Who may call the server: the inference key, the admin key, and whether a bind address is exposed.

Keys are read where they are used (the replicas), from the process environment or a file on the
node, so they never travel in a job's runtime_env (the Ray dashboard shows those)."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path


def read_key(env_name: str | None, file: Path | None) -> str:
    """The key in `env_name` if set, else the content of `file` (stripped) if it exists, else "" (no key)."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name].strip()
    if file is not None:
        path = Path(file).expanduser()
        if path.is_file():
            return path.read_text().strip()
    return ""


def bearer_matches(authorization: str, key: str) -> bool:
    given = authorization.removeprefix("Bearer ").strip()
    return bool(key) and hmac.compare_digest(given.encode(), key.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def where_keys_go(env_name: str | None, file: Path | None, what: str) -> str:
    places = [f"set {env_name} in the environment of every node (where `ray start` runs)"] if env_name else []
    places.append(f"write it to {file} on every node" if file else f"name a file holding it: --set {what}_key_file=PATH")
    return " or ".join(places)
