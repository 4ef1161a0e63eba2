"""Tests for sftpjail.passwords: real argon2id and bcrypt, no stubs."""

from __future__ import annotations

import argon2
import bcrypt
import pytest

from sftpjail.passwords import (
    DUMMY_HASH,
    equalize_timing,
    hash_password,
    is_supported_hash,
    needs_rehash,
    verify_password,
)

# The cheapest cost bcrypt allows keeps these tests quick; the cost is part
# of the hash, so checking does not depend on it.
_BCRYPT_TEST_ROUNDS = 4


def _bcrypt_hash(password: str, prefix: str = "$2b$") -> str:
    salt = bcrypt.gensalt(_BCRYPT_TEST_ROUNDS)
    made = bcrypt.hashpw(password.encode(), salt).decode()
    return prefix + made[len("$2b$") :]


def test_hash_password_makes_argon2id_that_verifies() -> None:
    made = hash_password("correct horse")

    assert made.startswith("$argon2id$v=19$")
    assert verify_password(made, "correct horse")
    assert not verify_password(made, "correct horsE")


def test_hash_password_salts_every_hash() -> None:
    assert hash_password("same") != hash_password("same")


@pytest.mark.parametrize("prefix", ["$2b$", "$2a$", "$2y$"])
def test_bcrypt_hash_verifies(prefix: str) -> None:
    made = _bcrypt_hash("s3cret", prefix)

    assert is_supported_hash(made)
    assert verify_password(made, "s3cret")
    assert not verify_password(made, "s3cret!")


def test_bcrypt_long_password_is_cut_like_other_tools_do() -> None:
    long_password = "x" * 100
    made = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(_BCRYPT_TEST_ROUNDS)).decode()

    assert verify_password(made, long_password)


@pytest.mark.parametrize(
    "bad_hash",
    [
        None,
        "",
        "plaintext",
        "$argon2id$",
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$tooshort",
        "$2b$04$short",
        "$1$md5crypt$0123456789012345678901",
    ],
)
def test_malformed_hash_matches_nothing_and_never_raises(bad_hash: str | None) -> None:
    assert verify_password(bad_hash, "anything") is False


def test_argon2i_hash_is_not_accepted() -> None:
    argon2i = argon2.PasswordHasher(type=argon2.Type.I).hash("pw")

    assert not is_supported_hash(argon2i)
    assert not verify_password(argon2i, "pw")


def test_undecodable_password_does_not_raise() -> None:
    lone_surrogate = "pass\udcffword"

    assert verify_password(hash_password("password"), lone_surrogate) is False
    assert verify_password(_bcrypt_hash("password"), lone_surrogate) is False


def test_supported_hash_formats() -> None:
    assert is_supported_hash(hash_password("pw"))
    assert is_supported_hash(_bcrypt_hash("pw"))
    assert not is_supported_hash("$2b$04$" + "a" * 52)
    assert not is_supported_hash("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA")


def test_dummy_hash_costs_what_a_real_hash_costs() -> None:
    dummy = argon2.extract_parameters(DUMMY_HASH)
    real = argon2.extract_parameters(hash_password("pw"))

    assert dummy == real


def test_equalize_timing_runs_the_unknown_user_path() -> None:
    equalize_timing("whatever the client sent")

    assert not verify_password(DUMMY_HASH, "whatever the client sent")


def test_needs_rehash() -> None:
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)

    assert needs_rehash(_bcrypt_hash("pw"))
    assert needs_rehash(weak.hash("pw"))
    assert not needs_rehash(hash_password("pw"))
    assert not needs_rehash(None)
    assert not needs_rehash("garbage")
