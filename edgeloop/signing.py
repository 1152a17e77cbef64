"""Ed25519 keys for signed model deployment (the ``cryptography`` package).

Why Ed25519: small keys and signatures (32/64 bytes), deterministic signing
(no nonce to get wrong), fast verification on a Pi, and no parameters to
choose. Why ``cryptography``: the maintained binding to OpenSSL; nothing here
is hand-written crypto.

Files (both PEM):

    deploy.key   PKCS#8 private key, unencrypted, mode 0600 -- stays on the cloud side
    deploy.pub   SubjectPublicKeyInfo public key           -- goes to every edge

A key's id is the first 16 hex digits of the sha256 of its raw 32 public-key
bytes: manifests carry it so an edge can tell "signed with a key I do not
know" from "signature does not verify".

File modes: whoever can replace ``deploy.pub`` (or rename another file into
its directory) decides which models an edge runs, so :meth:`VerifyKey.load`
refuses a key file or directory that group or others may write. A private key
readable by group or others is used but logged as a warning (the same policy
as secret files, ``edgeloop.secrets``). :func:`generate_keypair` sets the modes
itself (directory 0700, ``deploy.key`` 0600, ``deploy.pub`` 0644), whatever the
umask.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from edgeloop.errors import ConfigError

PRIVATE_KEY_FILE = "deploy.key"
PUBLIC_KEY_FILE = "deploy.pub"

log = logging.getLogger("edgeloop.signing")


def writable_by_others(path: Path) -> list[str]:
    """Problems if ``path`` or its directory may be written by group or others (a key anyone can swap)."""
    problems = []
    for what, target in (("key file", path), ("directory", path.parent)):
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            continue  # reading the key reports a missing file
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"the {what} {target} is writable by group or others (mode {mode:04o}), so anyone "
                            f"could replace the trusted key; chmod go-w {target}")
    return problems


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover -- the edge and bridge extras both install it
        raise ConfigError(
            "deployment", [f"signed deployment needs the 'cryptography' package ({exc}); pip install cryptography"]
        ) from None
    return serialization, ed25519, InvalidSignature


class SigningKey:
    """A private Ed25519 key. ``repr`` never shows key material."""

    def __init__(self, key) -> None:
        self._key = key
        self.public = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        _, ed25519, _ = _crypto()
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Read a PEM private key; ConfigError names the file (never its content)."""
        serialization, ed25519, _ = _crypto()
        path = Path(path)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(str(path), [f"cannot read signing key: {exc.strerror}"]) from None
        except (ValueError, TypeError):
            raise ConfigError(str(path), ["not an unencrypted PEM private key"]) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(str(path), ["the signing key must be an Ed25519 key"])
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("signing key %s is readable by group or others (mode %04o): anyone who reads it can sign "
                        "models for the fleet; chmod 600 %s", path, mode, path)
        return cls(key)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def private_pem(self) -> bytes:
        serialization, _, _ = _crypto()
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id})"


class VerifyKey:
    """A public Ed25519 key."""

    def __init__(self, key) -> None:
        serialization, _, _ = _crypto()
        self._key = key
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> VerifyKey:
        """Read a PEM public key; ConfigError if it is not one, or if group or others may replace it."""
        serialization, ed25519, _ = _crypto()
        path = Path(path)
        problems = writable_by_others(path)
        if problems:
            raise ConfigError(str(path), problems)
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise ConfigError(str(path), [f"cannot read public key: {exc.strerror}"]) from None
        except (ValueError, TypeError):
            raise ConfigError(str(path), ["not a PEM public key"]) from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigError(str(path), ["the deploy public key must be an Ed25519 key"])
        return cls(key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        _, _, invalid = _crypto()
        try:
            self._key.verify(signature, data)
        except invalid:
            return False
        return True

    def public_pem(self) -> bytes:
        serialization, _, _ = _crypto()
        return self._key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id})"


def generate_keypair(out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write ``deploy.key`` (0600) and ``deploy.pub`` (0644) into ``out_dir`` (0700 if created here);
    return both paths and the key id.

    Modes are set explicitly, never left to the umask: the private key file is
    created 0600 from the start (``os.open`` with O_EXCL), so it is never
    readable by others, not even briefly. An existing ``out_dir`` that group or
    others may write is refused: they could swap the keys.
    """
    out = Path(out_dir)
    if out.is_dir():
        mode = stat.S_IMODE(out.stat().st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(str(out), [f"directory is writable by group or others (mode {mode:04o}); "
                                         f"chmod go-w {out} or choose another directory"])
    else:
        out.mkdir(parents=True)
        os.chmod(out, 0o700)
    private, public = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    if not overwrite and (private.exists() or public.exists()):
        raise ConfigError(str(out), [f"{private.name} or {public.name} already exists (refusing to overwrite keys)"])
    key = SigningKey.generate()
    if overwrite:
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
    for path, data, mode in ((private, key.private_pem(), 0o600), (public, key.public.public_pem(), 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have taken bits away, or (000) left them all
            fh.write(data)
    return private, public, key.key_id
