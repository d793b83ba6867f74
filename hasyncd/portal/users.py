"""The portal's users file: salted scrypt password hashes, one user a line.

Line format: ``name:scrypt:N:r:p:salt_hex:hash_hex``.  ``hasyncd portal-user
add NAME`` writes it (mode 0600, replaced atomically); the portal re-reads it
when its modification time changes.  Passwords are never logged or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from hasyncd.config import read_private_file
from hasyncd.errors import ConfigError

USER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}\Z")
# scrypt cost: N=2^14, r=8 takes 16 MiB and ~50 ms per check on one core, the
# parameters RFC 7914 and OWASP give for interactive logins.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024  # above 128 * N * r * p for every N accepted below
MAX_SCRYPT_N = 1 << 20  # a users file asking for more is refused, not computed
SALT_BYTES = 16
HASH_BYTES = 32
# Long enough for any passphrase; a bounded input keeps a check's cost bounded.
MAX_PASSWORD_BYTES = 1024
MAX_USERS_FILE = 4 * 1024 * 1024  # ~20,000 users


@dataclass(frozen=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"PasswordHash(scrypt n={self.n} r={self.r} p={self.p}, <redacted>)"

    def line(self, name: str) -> str:
        return f"{name}:scrypt:{self.n}:{self.r}:{self.p}:{self.salt.hex()}:{self.digest.hex()}"


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES
    )


def hash_password(password: str) -> PasswordHash:
    raw = password.encode()
    if not 1 <= len(raw) <= MAX_PASSWORD_BYTES:
        raise ConfigError(f"a password must be 1..{MAX_PASSWORD_BYTES} bytes")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(raw, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest)


# Checked against unknown users, so a wrong name costs as much as a wrong password.
_DUMMY = PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, bytes(SALT_BYTES), bytes(HASH_BYTES))


def verify(users: dict[str, PasswordHash], name: str, password: str) -> bool:
    raw = password.encode()
    known = users.get(name)
    h = known if known is not None else _DUMMY
    if not 1 <= len(raw) <= MAX_PASSWORD_BYTES:
        return False
    ok = hmac.compare_digest(_scrypt(raw, h.salt, h.n, h.r, h.p), h.digest)
    return ok and known is not None


def parse_users(text: str, where: str) -> dict[str, PasswordHash]:
    users: dict[str, PasswordHash] = {}
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        try:
            name, algo, n, r, p, salt, digest = parts
            h = PasswordHash(int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest))
        except ValueError:
            raise ConfigError(f"{where}:{lineno}: not name:scrypt:N:r:p:salt:hash") from None
        if algo != "scrypt" or not USER_RE.match(name):
            raise ConfigError(f"{where}:{lineno}: not name:scrypt:N:r:p:salt:hash")
        if not (2 <= h.n <= MAX_SCRYPT_N and h.n & (h.n - 1) == 0 and 1 <= h.r <= 32):
            raise ConfigError(f"{where}:{lineno}: scrypt parameters out of range")
        if not 1 <= h.p <= 16 or 128 * h.n * h.r * h.p > SCRYPT_MAXMEM:
            raise ConfigError(f"{where}:{lineno}: scrypt parameters out of range")
        if len(h.digest) != HASH_BYTES or not h.salt:
            raise ConfigError(f"{where}:{lineno}: bad salt or hash length")
        if name in users:
            raise ConfigError(f"{where}:{lineno}: user {name!r} appears twice")
        users[name] = h
    return users


def read_users(path: Path) -> dict[str, PasswordHash]:
    """The users file (none yet: no users); refused if group or others can access it."""
    try:
        raw = read_private_file(path, "[portal].users_file", MAX_USERS_FILE)
    except FileNotFoundError:
        return {}
    return parse_users(raw.decode("utf-8", "replace"), str(path))


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or replace ``name``; True if it replaced an existing user.  Mode 0600."""
    if not USER_RE.match(name):
        raise ConfigError(f"user name must be 1..64 characters of [A-Za-z0-9._@-], got {name!r}")
    users = read_users(path)
    replaced = name in users
    users[name] = hash_password(password)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create {tmp}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, "".join(h.line(n) + "\n" for n, h in users.items()).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return replaced


class UsersFile:
    """The users file, re-read when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, PasswordHash] = {}

    def users(self) -> dict[str, PasswordHash]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._users = read_users(self.path)
            self._stamp = stamp
        return self._users
