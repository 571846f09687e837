"""Private signing keys at rest: AES-256-GCM under the key-encryption key (KEK).

Layout of a wrapped key::

    version (1 byte) | len(kek_id) (1 byte) | kek_id (ASCII) | nonce (12 bytes) | ct+tag

The KEK id travels in the clear so that ``rewrap`` can tell which KEK each row needs after
the KEK is rotated, without trial decryption. The associated data binds the header and the
key's ``kid``: a ciphertext copied onto another row, or given another KEK id, fails to
decrypt instead of silently signing under the wrong name.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
NONCE_BYTES = 12
_AAD_LABEL = b"pii-broker/signing-key/v1\x00"


class KeyWrapError(Exception):
    """A wrapped key is malformed, under another KEK, or was tampered with.

    The message names the kid and KEK id at most, never key material.
    """


def _header(kek_id: str) -> bytes:
    raw_id = kek_id.encode("ascii")
    if not 0 < len(raw_id) < 256:
        raise ValueError("a KEK id is 1 to 255 ASCII characters")
    return bytes([VERSION, len(raw_id)]) + raw_id


def _aad(header: bytes, kid: str) -> bytes:
    return _AAD_LABEL + header + b"\x00" + kid.encode()


def _check_kek(kek: bytes) -> None:
    if len(kek) != 32:
        raise ValueError("the KEK must be 32 bytes (AES-256)")


def wrap(kek: bytes, kek_id: str, kid: str, plaintext: bytes) -> bytes:
    _check_kek(kek)
    header = _header(kek_id)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(kek).encrypt(nonce, plaintext, _aad(header, kid))


def _split(blob: bytes) -> tuple[bytes, str, bytes, bytes]:
    if len(blob) < 2 or blob[0] != VERSION:
        raise KeyWrapError("wrapped key has an unknown format version")
    end = 2 + blob[1]
    if blob[1] == 0 or len(blob) < end + NONCE_BYTES + 16:
        raise KeyWrapError("wrapped key is truncated")
    header = blob[:end]
    try:
        kek_id = header[2:].decode("ascii")
    except UnicodeDecodeError:
        raise KeyWrapError("wrapped key has a malformed KEK id") from None
    return header, kek_id, blob[end : end + NONCE_BYTES], blob[end + NONCE_BYTES :]


def kek_id_of(blob: bytes) -> str:
    """The id of the KEK a wrapped key needs."""
    return _split(blob)[1]


def unwrap(kek: bytes, kek_id: str, kid: str, blob: bytes) -> bytes:
    _check_kek(kek)
    header, wrapped_under, nonce, ciphertext = _split(blob)
    if wrapped_under != kek_id:
        raise KeyWrapError(
            f"signing key {kid} is wrapped under KEK {wrapped_under}, not the configured {kek_id}"
        )
    try:
        return AESGCM(kek).decrypt(nonce, ciphertext, _aad(header, kid))
    except InvalidTag:
        raise KeyWrapError(
            f"signing key {kid} does not decrypt under KEK {kek_id} (wrong KEK or tampered)"
        ) from None


def rewrap(
    old_kek: bytes, old_kek_id: str, new_kek: bytes, new_kek_id: str, kid: str, blob: bytes
) -> bytes:
    return wrap(new_kek, new_kek_id, kid, unwrap(old_kek, old_kek_id, kid, blob))


def read_kek_file(path: Path) -> bytes:
    """A KEK file as ``broker`` writes and reads them: base64url of 32 bytes."""
    text = path.read_text().strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise ValueError(f"{path} does not hold base64 of 32 bytes") from None
    if len(raw) != 32:
        raise ValueError(f"{path} does not hold base64 of 32 bytes")
    return raw
