"""The two crypto suites: known answers, round trips, tampering, keys, and OpenSSL interop."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from nobusy import crypto
from nobusy.crypto import CryptoError, load_suite, signature_algorithm, verify_signature

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


@pytest.fixture
def gm(tmp_path: Path) -> crypto.CryptoSuite:
    return load_suite("gm", tmp_path, {})


@pytest.fixture
def std(tmp_path: Path) -> crypto.CryptoSuite:
    return load_suite("standard", tmp_path, {})


def test_sm3_known_answer(gm: crypto.CryptoSuite) -> None:
    expected = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert gm.hexdigest(b"abc") == expected
    assert gm.hash(b"abc").hex() == expected
    assert len(gm.keyed_hash(b"k", b"abc")) == 32
    assert gm.keyed_hash(b"k", b"abc") != gm.keyed_hash(b"j", b"abc")


def test_sm4_gcm_known_answer() -> None:
    # RFC 8998, appendix A.1: SM4-GCM.
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plain = bytes.fromhex("".join(c * 16 for c in "ABCDEFEA"))
    sealed = crypto._sm4_seal(key, nonce, plain, aad)
    assert sealed.hex().upper() == (
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        "83DE3541E4C2B58177E065A9BF7B62EC"
    )
    assert crypto._sm4_open(key, nonce, sealed, aad) == plain


@pytest.mark.parametrize("name", ["gm", "standard"])
def test_round_trip_and_token_layout(tmp_path: Path, name: crypto.SuiteName) -> None:
    suite = load_suite(name, tmp_path, {})
    token = suite.encrypt(b"hello", b"row 1")
    assert token[0] == crypto.TOKEN_VERSION and token[1] == (1 if name == "gm" else 2)
    assert len(token) == 2 + 12 + len(b"hello") + 16
    assert suite.decrypt(token, b"row 1") == b"hello"
    assert suite.encrypt(b"hello", b"row 1") != token  # a fresh nonce each time


def test_tampering_fails(gm: crypto.CryptoSuite) -> None:
    token = gm.encrypt(b"the request", b"aad")
    for i in (1 + 1, 2 + 12, len(token) - 1):  # nonce, ciphertext, tag
        bad = bytearray(token)
        bad[i] ^= 1
        with pytest.raises(CryptoError, match="authentication failed"):
            gm.decrypt(bytes(bad), b"aad")
    with pytest.raises(CryptoError, match="authentication failed"):
        gm.decrypt(token, b"other aad")
    with pytest.raises(CryptoError, match="not a nobusy token"):
        gm.decrypt(token[:20], b"aad")


def test_wrong_suite_says_so(gm: crypto.CryptoSuite, std: crypto.CryptoSuite) -> None:
    with pytest.raises(CryptoError, match="sealed with the 'standard' suite.*this is the 'gm'"):
        gm.decrypt(std.encrypt(b"x"))
    with pytest.raises(CryptoError, match="sealed with the 'gm' suite .SM4-GCM."):
        std.decrypt(gm.encrypt(b"x"))


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    a = load_suite("gm", tmp_path, {})
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b = load_suite("gm", tmp_path, {})
    assert b.decrypt(a.encrypt(b"x")) == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary left over


def test_key_file_not_created_when_asked(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="no NOBUSY_SECRET_KEY"):
        load_suite("gm", tmp_path, {}, create_key=False)
    assert not (tmp_path / "secret.key").exists()


def test_env_key_hex_base64_and_passphrase(tmp_path: Path) -> None:
    key = os.urandom(16)
    by_hex = load_suite("gm", tmp_path, {"NOBUSY_SECRET_KEY": key.hex()})
    by_b64 = load_suite("gm", tmp_path, {"NOBUSY_SECRET_KEY": base64.b64encode(key).decode()})
    assert by_b64.decrypt(by_hex.encrypt(b"x")) == b"x"
    assert not (tmp_path / "secret.key").exists()
    aes = load_suite("standard", tmp_path, {"NOBUSY_SECRET_KEY": os.urandom(32).hex()})
    assert aes.decrypt(aes.encrypt(b"y")) == b"y"
    phrase = {"NOBUSY_SECRET_KEY": "correct horse battery staple"}
    assert (
        load_suite("gm", tmp_path, phrase).decrypt(load_suite("gm", tmp_path, phrase).encrypt(b"z"))
        == b"z"
    )
    with pytest.raises(CryptoError, match="at least 12 characters"):
        load_suite("gm", tmp_path, {"NOBUSY_SECRET_KEY": "short"})


def test_other_key_fails(tmp_path: Path) -> None:
    a = load_suite("gm", tmp_path, {"NOBUSY_SECRET_KEY": os.urandom(16).hex()})
    b = load_suite("gm", tmp_path, {"NOBUSY_SECRET_KEY": os.urandom(16).hex()})
    with pytest.raises(CryptoError, match="wrong key"):
        b.decrypt(a.encrypt(b"x"))


@pytest.mark.parametrize("name", ["gm", "standard"])
def test_sign_and_verify(tmp_path: Path, name: crypto.SuiteName) -> None:
    suite = load_suite(name, tmp_path, {})
    signature = suite.sign(b"export bytes")
    pem = suite.public_key_path.read_bytes()
    assert stat.S_IMODE(suite.signing_key_path.stat().st_mode) == 0o600
    assert signature_algorithm(pem) == ("SM2" if name == "gm" else "Ed25519")
    assert verify_signature(pem, b"export bytes", signature)
    assert not verify_signature(pem, b"export bytez", signature)
    assert not verify_signature(pem, b"export bytes", signature[:-1] + bytes([signature[-1] ^ 1]))
    other = load_suite(name, tmp_path / "other", {})
    assert not verify_signature(other.public_key_pem(), b"export bytes", signature)
    # The key pair is made once and kept.
    assert load_suite(name, tmp_path, {}).public_key_pem() == pem


def _openssl(*args: str | Path, data: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *map(str, args)], input=data, capture_output=True,
                          check=True).stdout  # fmt: skip


@needs_openssl
def test_sm3_matches_openssl(gm: crypto.CryptoSuite) -> None:
    data = os.urandom(100_000)
    out = _openssl("dgst", "-sm3", "-r", data=data).decode()
    assert out.split()[0] == gm.hexdigest(data)


@needs_openssl
def test_sm2_interoperates_with_openssl(tmp_path: Path, gm: crypto.CryptoSuite) -> None:
    msg = tmp_path / "msg"
    msg.write_bytes(b"an audit export")
    # OpenSSL reads our private key and derives the same public key...
    pub = gm.public_key_pem()
    assert _openssl("pkey", "-in", gm.signing_key_path, "-pubout") == pub
    # ...verifies our signature (SM3 over Z || M, with the default user id)...
    sig = tmp_path / "msg.sig"
    sig.write_bytes(gm.sign(msg.read_bytes()))
    distid = ("-pkeyopt", "distid:1234567812345678")
    verify = ("pkeyutl", "-verify", "-pubin", "-inkey", gm.public_key_path, "-rawin")
    _openssl(*verify, "-in", msg, "-sigfile", sig, "-digest", "sm3", *distid)
    # ...and we verify its signatures.
    signed = _openssl("pkeyutl", "-sign", "-inkey", gm.signing_key_path, "-rawin", "-in", msg,
                      "-digest", "sm3", *distid)  # fmt: skip
    assert verify_signature(pub, msg.read_bytes(), signed)
    assert not verify_signature(pub, b"another export", signed)


def test_unknown_suite_and_bad_public_key(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="unknown crypto suite"):
        load_suite("rsa", tmp_path, {})  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="not a PEM"):
        signature_algorithm(b"hello")
