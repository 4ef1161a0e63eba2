"""OpenSSH public key lines: parse, normalize, fingerprint, compare.

A line is "type base64 [comment]", as in a `.pub` file or one line of
authorized_keys without options.  Two lines hold the same key when their
type and key data agree, whatever their comments say.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncssh

FINGERPRINT_PREFIX = "SHA256:"


def parse_public_key(line: str) -> asyncssh.SSHKey:
    """Import one public key line; ValueError says why it is not one."""

    text = line.strip()
    if not text:
        raise ValueError("is empty")
    if "\n" in text or "\r" in text:
        raise ValueError("must be one line holding one key")
    try:
        return asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as error:
        raise ValueError(f"is not an OpenSSH public key ({error})") from None


def key_line(key: asyncssh.SSHKey) -> str:
    """Render a key as its normalized line, "type base64 [comment]"."""

    return key.export_public_key("openssh").decode("utf-8").strip()


def normalize_public_key(line: str) -> str:
    """Return a public key line in normalized form; ValueError if invalid."""

    return key_line(parse_public_key(line))


def key_fingerprint(line: str) -> str:
    """Return the SHA256:... fingerprint of a key line; ValueError if invalid."""

    return parse_public_key(line).get_fingerprint("sha256")


def same_key(line: str, key: asyncssh.SSHKey) -> bool:
    """Tell whether `line` holds `key`; an invalid line holds no key."""

    try:
        return parse_public_key(line).public_data == key.public_data
    except ValueError:
        return False


def key_matcher(wanted: str) -> Callable[[str], bool]:
    """A test for key lines: by SHA256:... fingerprint or by the key itself.

    Raises ValueError when `wanted` is neither.
    """

    wanted = wanted.strip()
    if wanted.startswith(FINGERPRINT_PREFIX):
        return lambda line: _fingerprint_or_none(line) == wanted
    key = parse_public_key(wanted)
    return lambda line: same_key(line, key)


def describe_key(key_or_fingerprint: str) -> str:
    """A short, printable name for a key: its fingerprint when possible."""

    text = key_or_fingerprint.strip()
    if text.startswith(FINGERPRINT_PREFIX):
        return text
    return _fingerprint_or_none(text) or "the given key"


def _fingerprint_or_none(line: str) -> str | None:
    try:
        return key_fingerprint(line)
    except ValueError:
        return None
