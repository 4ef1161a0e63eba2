"""Password hashes: make argon2id ones, check argon2id and bcrypt ones.

Why argon2id: checking a guess against it costs memory as well as time
(64 MiB and about a tenth of a second here, per RFC 9106's low-memory
profile), so an attacker who steals the users file cannot run millions of
guesses a second on GPUs or custom chips the way they can against fast
hashes.  The "id" variant mixes the data-independent first pass of argon2i
(which resists side channels on a shared machine) with the data-dependent
passes of argon2d (which resist trading memory for time).

bcrypt hashes (`$2a$`, `$2b$`, `$2y$`) are accepted so that accounts can be
moved from htpasswd files and other servers without a password reset;
`needs_rehash` tells a caller which hashes are worth replacing.

Nothing here logs, prints or raises with a password or a hash in it, and
the checking functions never raise on bad input: a malformed hash simply
matches no password.
"""

from __future__ import annotations

import re

import argon2
import bcrypt

# Pinned rather than left to the library's default so that a library
# upgrade cannot silently make new hashes weaker, and so that the dummy hash
# below keeps costing what a real one costs.
_HASHER = argon2.PasswordHasher.from_parameters(argon2.profiles.RFC_9106_LOW_MEMORY)

# A hash of a password nobody uses, made with the parameters above.  Checking
# a guess against it costs the same as checking it against a real user's.
DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$xBmnXQcyhMHeJnDvuO4nXw"
    "$kKOkK+xOe0XK1q3tLhk0PZzpdpgFAmjpKg9ryKs5B50"
)

_ARGON2ID_PREFIX = "$argon2id$"
_BCRYPT_FORMAT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

# bcrypt only ever looks at this many bytes of a password.  The tools that
# make bcrypt hashes (htpasswd, PHP, older Python bcrypt) cut longer ones
# silently, so a check must cut the same way to accept the same passwords.
_BCRYPT_MAX_PASSWORD_BYTES = 72

# Shorter salts or outputs than these are not hashes anyone should trust.
_MIN_SALT_BYTES = 8
_MIN_HASH_BYTES = 16


def hash_password(password: str) -> str:
    """Return a new argon2id hash of `password` with a random salt."""

    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Tell whether `password` matches `password_hash` (argon2id or bcrypt).

    A missing, malformed or unsupported hash matches nothing; this never
    raises on bad input.
    """

    if password_hash is None:
        return False
    if password_hash.startswith(_ARGON2ID_PREFIX):
        return _verify_argon2id(password_hash, password)
    if _BCRYPT_FORMAT.fullmatch(password_hash):
        return _verify_bcrypt(password_hash, password)
    return False


def equalize_timing(password: str) -> None:
    """Spend the time a real check would, for a user who does not exist.

    Without this, "no such user" answers faster than "wrong password", and
    the difference tells an attacker which user names are real.
    """

    _verify_argon2id(DUMMY_HASH, password)


def needs_rehash(password_hash: str | None) -> bool:
    """Tell whether a hash should be replaced by a fresh argon2id one.

    True for bcrypt hashes and for argon2id hashes made with weaker
    parameters than `hash_password` uses now; False for anything that is
    not a supported hash at all (there is nothing to upgrade).
    """

    if password_hash is None or not is_supported_hash(password_hash):
        return False
    if not password_hash.startswith(_ARGON2ID_PREFIX):
        return True
    return _HASHER.check_needs_rehash(password_hash)


def is_supported_hash(password_hash: str) -> bool:
    """Tell whether the text is a well-formed argon2id or bcrypt hash."""

    if _BCRYPT_FORMAT.fullmatch(password_hash):
        return True
    if not password_hash.startswith(_ARGON2ID_PREFIX):
        return False
    try:
        parameters = argon2.extract_parameters(password_hash)
    except argon2.exceptions.InvalidHashError:
        return False
    return (
        parameters.type is argon2.Type.ID
        and parameters.salt_len >= _MIN_SALT_BYTES
        and parameters.hash_len >= _MIN_HASH_BYTES
    )


def _verify_argon2id(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
    except UnicodeEncodeError:
        # A str carrying lone surrogates (undecodable client bytes) cannot
        # be UTF-8 encoded, so it cannot be anyone's password.
        return False


def _verify_bcrypt(password_hash: str, password: str) -> bool:
    try:
        secret = password.encode("utf-8")[:_BCRYPT_MAX_PASSWORD_BYTES]
        return bcrypt.checkpw(secret, password_hash.encode("ascii"))
    except (UnicodeEncodeError, ValueError):
        return False
