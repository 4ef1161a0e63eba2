"""Tests for sftpjail.public_keys with keys asyncssh really generates."""

from __future__ import annotations

import asyncssh
import pytest

from sftpjail.public_keys import (
    describe_key,
    key_fingerprint,
    key_matcher,
    normalize_public_key,
    parse_public_key,
)


def _line(algorithm: str = "ssh-ed25519", comment: str | None = None) -> str:
    key = asyncssh.generate_private_key(algorithm, comment=comment)
    return key.export_public_key("openssh").decode().strip()


@pytest.mark.parametrize("algorithm", ["ssh-ed25519", "ecdsa-sha2-nistp256"])
def test_normalize_collapses_spacing_and_keeps_the_comment(algorithm: str) -> None:
    key_type, key_data, comment = _line(algorithm, "me@host").split()

    normalized = normalize_public_key(f"\t{key_type}  {key_data}   {comment} \n")

    assert normalized == f"{key_type} {key_data} {comment}"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("", "is empty"),
        ("ssh-ed25519 AAAA", "is not an OpenSSH public key"),
        (
            "ssh-rsa "
            + "AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "is not an OpenSSH public key",
        ),
    ],
)
def test_invalid_lines_say_why(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_public_key(line)


def test_two_keys_on_two_lines_are_refused() -> None:
    with pytest.raises(ValueError, match="one line holding one key"):
        parse_public_key(_line() + "\n" + _line())


def test_authorized_keys_options_are_refused() -> None:
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        parse_public_key('from="127.0.0.1" ' + _line())


def test_fingerprint_matches_ssh_keygen_style() -> None:
    private = asyncssh.generate_private_key("ssh-ed25519")
    line = private.export_public_key("openssh").decode()

    assert key_fingerprint(line) == private.get_fingerprint("sha256")
    assert key_fingerprint(line).startswith("SHA256:")


def test_matcher_by_fingerprint_and_by_key() -> None:
    line = _line(comment="laptop")
    other = _line()
    without_comment = " ".join(line.split()[:2])

    for wanted in (key_fingerprint(line), without_comment):
        matches = key_matcher(wanted)
        assert matches(line)
        assert not matches(other)
        assert not matches("garbage")


def test_matcher_refuses_what_is_neither() -> None:
    with pytest.raises(ValueError):
        key_matcher("nothing like a key")


def test_describe_key_prefers_the_fingerprint() -> None:
    line = _line()

    assert describe_key(line) == key_fingerprint(line)
    assert describe_key("SHA256:abc") == "SHA256:abc"
    assert describe_key("junk") == "the given key"
