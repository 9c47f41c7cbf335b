"""Hashing, encryption at rest and signatures: one of two suites, chosen by ``crypto``.

``gm`` (the default, 国密): SM3 hashes and HMAC, SM4-GCM, SM2 signatures with the default user
id ``1234567812345678``; ``standard``: SHA-256 and HMAC, AES-256-GCM, Ed25519.

The data key comes from ``NOBUSY_SECRET_KEY`` when it is set: hex or base64 of exactly the
cipher's key size (16 bytes for SM4, 32 for AES) is used as it is; any other value is a
passphrase (at least 12 characters), stretched with PBKDF2-HMAC-SM3/SHA-256 (RFC 8018,
600,000 iterations, salt ``nobusy data key/<suite>``). Otherwise ``data_dir/secret.key``
holds 32 random bytes (hex), created 0600 on first use, and the key is HKDF-SM3/SHA-256 of
them (RFC 5869, info ``nobusy data key/<suite>``). The signing key pair is created on first
use as ``data_dir/signing-sm2.key`` or ``signing-ed25519.key`` (PKCS#8 PEM, 0600) with the
public key beside it (``.pub``, SubjectPublicKeyInfo PEM); both read by OpenSSL.

A token is ``version (1) || suite id (1: SM4-GCM, 2: AES-256-GCM) || nonce (12) ||
ciphertext || tag (16)``; the two header bytes are authenticated with the caller's AAD.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from gmalg import errors as gm_errors
from gmalg import sm2 as gm_sm2

from nobusy.store.sqlite import private_dir

__all__ = [
    "CryptoError",
    "CryptoSuite",
    "SuiteName",
    "check_data_key",
    "load_suite",
    "signature_algorithm",
    "verify_signature",
]

SuiteName = Literal["gm", "standard"]

TOKEN_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
PBKDF2_ITERATIONS = 600_000
SM2_USER_ID = b"1234567812345678"  # GM/T 0009's default; OpenSSL's too (distid)

# DER prefixes of SM2 keys: id-ecPublicKey with the SM2 curve (1.2.156.10197.1.301). The keys
# have fixed sizes, so PKCS#8 and SubjectPublicKeyInfo are a constant prefix plus the key.
_SM2_SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200")
_SM2_PKCS8 = bytes.fromhex("3041020100301306072a8648ce3d020106082a811ccf5501822d042730250201010420")


class CryptoError(Exception):
    """A token, key or signature that cannot be used: wrong key, wrong suite, tampered."""


def _sm4_seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    # cryptography has no SM4 AEAD helper (only AES*/ChaCha20), but SM4 in GCM mode
    # works through Cipher on its bundled OpenSSL.
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    return enc.update(data) + enc.finalize() + enc.tag


def _sm4_open(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    if len(data) < TAG_SIZE:
        raise InvalidTag
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, data[-TAG_SIZE:])).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(data[:-TAG_SIZE]) + dec.finalize()


def _aes_seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, data, aad)


def _aes_open(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(nonce, data, aad)


class _OpenSslSm3:
    """SM3 through OpenSSL for gmalg's SM2 (duck-typing ``gmalg.base.Hash``): gmalg's own
    pure-Python SM3 runs at ~0.3 MB/s, which would make signing a large export take minutes."""

    def __init__(self) -> None:
        self._h = hashlib.new("sm3")

    @classmethod
    def max_msg_length(cls) -> int:
        return 1 << 61

    @classmethod
    def hash_length(cls) -> int:
        return 32

    def reset(self) -> None:
        self._h = hashlib.new("sm3")

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def value(self) -> bytes:
        return self._h.digest()


class _Sm2:
    """SM2 signatures (GB/T 32918.2) by gmalg; DER ``SEQUENCE {r, s}`` as OpenSSL writes them."""

    name = "SM2"
    file = "signing-sm2"

    @staticmethod
    def _core() -> gm_sm2.SM2Core:
        # gmalg's SM2 class hard-wires its slow SM3; its core takes the hash as a parameter.
        return gm_sm2.SM2Core(gm_sm2._ecdlp, _OpenSslSm3())

    def generate(self) -> bytes:
        sk, _ = self._core().generate_keypair()
        return _pem("PRIVATE KEY", _SM2_PKCS8 + sk.to_bytes(32, "big"))

    def public_pem(self, private_pem: bytes) -> bytes:
        point = self._core().generate_pk(self._secret(private_pem))
        return _pem("PUBLIC KEY", _SM2_SPKI + gm_sm2.point_to_bytes(point, gm_sm2.PC_MODE.RAW))

    def sign(self, private_pem: bytes, data: bytes) -> bytes:
        r, s = self._core().sign(data, self._secret(private_pem), SM2_USER_ID)
        return encode_dss_signature(r, s)

    def verify(self, public_der: bytes, data: bytes, signature: bytes) -> bool:
        try:
            r, s = decode_dss_signature(signature)
            core = self._core()
            point = gm_sm2.bytes_to_point(public_der[len(_SM2_SPKI) :])
            if not core.verify_pk(point):
                return False
            return bool(core.verify(data, r, s, SM2_USER_ID, point))
        except (ValueError, gm_errors.GMError):
            return False

    @staticmethod
    def _secret(private_pem: bytes) -> int:
        der = _unpem(private_pem)
        if not der.startswith(_SM2_PKCS8) or len(der) != len(_SM2_PKCS8) + 32:
            raise CryptoError("not an SM2 private key in nobusy's PKCS#8 form")
        return int.from_bytes(der[len(_SM2_PKCS8) :], "big")


class _Ed25519:
    """Ed25519 signatures (RFC 8032) by cryptography: 64 raw bytes."""

    name = "Ed25519"
    file = "signing-ed25519"

    def generate(self) -> bytes:
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def _private(self, private_pem: bytes) -> ed25519.Ed25519PrivateKey:
        key = serialization.load_pem_private_key(private_pem, None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CryptoError("not an Ed25519 private key")
        return key

    def public_pem(self, private_pem: bytes) -> bytes:
        return (
            self._private(private_pem)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, private_pem: bytes, data: bytes) -> bytes:
        return self._private(private_pem).sign(data)

    def verify(self, public_der: bytes, data: bytes, signature: bytes) -> bool:
        key = serialization.load_der_public_key(public_der)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            return False
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


_HKDF_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sm3": hashes.SM3,
    "sha256": hashes.SHA256,
}


@dataclass(frozen=True)
class _Spec:
    suite_id: int
    hash_name: str
    cipher_name: str
    key_size: int
    seal: Callable[[bytes, bytes, bytes, bytes], bytes]
    open: Callable[[bytes, bytes, bytes, bytes], bytes]
    signer: _Sm2 | _Ed25519

    def hkdf(self, secret: bytes, info: bytes, length: int) -> bytes:
        return HKDF(_HKDF_HASHES[self.hash_name](), length, None, info).derive(secret)


_SPECS: dict[str, _Spec] = {
    "gm": _Spec(1, "sm3", "SM4-GCM", 16, _sm4_seal, _sm4_open, _Sm2()),
    "standard": _Spec(2, "sha256", "AES-256-GCM", 32, _aes_seal, _aes_open, _Ed25519()),
}
_BY_ID = {spec.suite_id: (name, spec) for name, spec in _SPECS.items()}


class CryptoSuite:
    """One suite with its data key: hash, HMAC, AEAD tokens, and the signing key pair."""

    def __init__(self, name: SuiteName, key: bytes, data_dir: Path) -> None:
        self.name: SuiteName = name
        self._spec = _SPECS[name]
        if len(key) != self._spec.key_size:
            raise CryptoError(f"the {self.cipher_name} key must be {self._spec.key_size} bytes")
        self._key = key
        self._data_dir = data_dir

    @property
    def hash_name(self) -> str:
        return self._spec.hash_name

    @property
    def cipher_name(self) -> str:
        return self._spec.cipher_name

    @property
    def signature_name(self) -> str:
        return self._spec.signer.name

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self._spec.hash_name, data).digest()

    def hexdigest(self, data: bytes) -> str:
        return hashlib.new(self._spec.hash_name, data).hexdigest()

    def keyed_hash(self, key: bytes, data: bytes) -> bytes:
        """HMAC (RFC 2104) with the suite's hash."""
        return hmac.new(key, data, self._spec.hash_name).digest()

    def subkey(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose, HKDF-derived from the data key."""
        return self._spec.hkdf(self._key, b"nobusy/" + purpose.encode(), 32)

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        header = bytes((TOKEN_VERSION, self._spec.suite_id))
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + self._spec.seal(self._key, nonce, plaintext, header + aad)

    def decrypt(self, token: bytes, aad: bytes = b"") -> bytes:
        if len(token) < 2 + NONCE_SIZE + TAG_SIZE or token[0] != TOKEN_VERSION:
            raise CryptoError("not a nobusy token (too short or unknown version)")
        if token[1] != self._spec.suite_id:
            other = _BY_ID.get(token[1])
            sealed = f"the {other[0]!r} suite ({other[1].cipher_name})" if other else "?"
            raise CryptoError(
                f"token was sealed with {sealed}; this is the {self.name!r} suite "
                f"({self.cipher_name}): set crypto to match"
            )
        header, nonce, body = token[:2], token[2 : 2 + NONCE_SIZE], token[2 + NONCE_SIZE :]
        try:
            return self._spec.open(self._key, nonce, body, header + aad)
        except InvalidTag:
            raise CryptoError(
                f"{self.cipher_name} authentication failed: wrong key, wrong AAD, or tampered"
            ) from None

    @property
    def signing_key_path(self) -> Path:
        return self._data_dir / f"{self._spec.signer.file}.key"

    @property
    def public_key_path(self) -> Path:
        return self._data_dir / f"{self._spec.signer.file}.pub"

    def public_key_pem(self) -> bytes:
        """The signing public key (PEM), creating the key pair (and its files) on first use."""
        signer = self._spec.signer
        private = _read_or_create(self.signing_key_path, signer.generate)
        public = signer.public_pem(private)
        if not self.public_key_path.exists() or self.public_key_path.read_bytes() != public:
            _write_atomic(self.public_key_path, public, 0o644)
        return public

    def sign(self, data: bytes) -> bytes:
        self.public_key_pem()
        return self._spec.signer.sign(self.signing_key_path.read_bytes(), data)


def signature_algorithm(public_key_pem: bytes) -> str:
    """``SM2`` or ``Ed25519``, from a SubjectPublicKeyInfo PEM."""
    der = _unpem(public_key_pem)
    if der.startswith(_SM2_SPKI) and len(der) == len(_SM2_SPKI) + 65:
        return "SM2"
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as e:
        raise CryptoError(f"unreadable public key: {e}") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    raise CryptoError(f"unsupported public key type {type(key).__name__}: need SM2 or Ed25519")


def verify_signature(public_key_pem: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``data``'s, by the key's algorithm (SM2 with SM3, or Ed25519)."""
    name = signature_algorithm(public_key_pem)
    signer = next(s.signer for s in _SPECS.values() if s.signer.name == name)
    return signer.verify(_unpem(public_key_pem), data, signature)


def load_suite(
    name: SuiteName, data_dir: Path, env: Mapping[str, str], *, create_key: bool = True
) -> CryptoSuite:
    """The suite ``name`` with its data key from ``env`` or ``data_dir/secret.key``."""
    if name not in _SPECS:
        raise CryptoError(f"unknown crypto suite {name!r}: use one of {get_args(SuiteName)}")
    spec = _SPECS[name]
    info = f"nobusy data key/{name}".encode()
    given = env.get("NOBUSY_SECRET_KEY")
    if given is not None:
        check_data_key(given, name)
        raw = given.strip()
        key = _decode_key(raw, spec.key_size)
        if key is None:
            key = hashlib.pbkdf2_hmac(
                spec.hash_name, raw.encode(), info, PBKDF2_ITERATIONS, spec.key_size
            )
        return CryptoSuite(name, key, data_dir)
    path = data_dir / "secret.key"
    if not create_key and not path.exists():
        raise CryptoError(f"no NOBUSY_SECRET_KEY and no {path}: nothing to decrypt or verify with")
    text = _read_or_create(path, lambda: secrets.token_hex(32).encode() + b"\n")
    try:
        secret = bytes.fromhex(text.decode().strip())
    except ValueError:
        raise CryptoError(f"{path} is not hex") from None
    return CryptoSuite(name, spec.hkdf(secret, info, spec.key_size), data_dir)


def check_data_key(given: str, name: SuiteName) -> None:
    """Refuse a ``NOBUSY_SECRET_KEY`` that is set but empty, or too weak to be a key."""
    size = _SPECS[name].key_size
    raw = given.strip()
    if not raw:
        # Set but empty (NOBUSY_SECRET_KEY= in a unit file): falling back to secret.key would
        # quietly encrypt under another key than the operator meant.
        raise CryptoError(
            "NOBUSY_SECRET_KEY is set but empty: unset it to use data_dir/secret.key, or set "
            f"hex/base64 of {size} bytes or a passphrase of at least 12 characters"
        )
    if _decode_key(raw, size) is None and len(raw) < 12:
        raise CryptoError(
            f"NOBUSY_SECRET_KEY is neither hex/base64 of {size} bytes "
            "nor a passphrase of at least 12 characters"
        )


def _decode_key(raw: str, size: int) -> bytes | None:
    if len(raw) == 2 * size:
        try:
            return bytes.fromhex(raw)
        except ValueError:
            pass
    try:
        key = base64.b64decode(raw, validate=True)
    except binascii.Error:
        return None
    return key if len(key) == size else None


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    text = f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"
    return text.encode()


def _unpem(pem: bytes) -> bytes:
    lines = [ln.strip() for ln in pem.decode(errors="replace").splitlines() if ln.strip()]
    if (
        len(lines) < 3
        or not lines[0].startswith("-----BEGIN")
        or not lines[-1].startswith("-----END")
    ):
        raise CryptoError("not a PEM file")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise CryptoError("PEM body is not base64") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` whole or not at all; False when it already exists (another process won)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the target exists, so two processes starting at once agree on one key.
        os.link(tmp, path)
        return True
    except FileExistsError:
        if mode != 0o600:  # a public file: replace it
            os.replace(tmp, path)
            return True
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    if not path.exists():
        _write_atomic(path, make(), 0o600)
    return path.read_bytes()
