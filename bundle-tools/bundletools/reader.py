"""Streaming bundle reader: parts -> checks -> AES-128-CBC -> gunzip -> tar -> image.

Checks everything the spec lists (part SHA-1s and lengths, bundled_size, PKCS#7
padding, the SHA-1 of the whole tar stream, image size) in one pass with constant
memory. Stages run concurrently: one thread reads, hashes and decrypts the parts,
one gunzips, and the calling thread parses the tar and writes the image.

Error precedence: a tampered part also garbles everything after it, so when a
later stage fails the part stage still finishes hashing the part it is in, and
its TamperedPart wins over the payload error it caused.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import keys, manifest as manifest_mod, tarstream
from .errors import (
    BundleError,
    CorruptPayload,
    DigestMismatch,
    MissingPart,
    SizeMismatch,
    TamperedPart,
    WrongKey,
)
from .manifest import Manifest, PartInfo
from .pgzip import GunzipStream
from .pipe import Pipe

CHUNK = 1 << 20
QUEUE_DEPTH = 8
Progress = Callable[[int], None]
OpenPart = Callable[[PartInfo], BinaryIO]
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True, slots=True)
class UnbundleResult:
    manifest: Manifest
    image_size: int
    tar_member_name: str  # for information only: never used as a path


def unwrap_bundle_key(manifest: Manifest, private_key) -> keys.AesKey:
    """AES key/IV from either copy: the user's first, then the cloud's (as euca2ools)."""
    errors = []
    for key_hex, iv_hex in (
        (manifest.user_encrypted_key, manifest.user_encrypted_iv),
        (manifest.ec2_encrypted_key, manifest.ec2_encrypted_iv),
    ):
        if not key_hex or not iv_hex:
            continue
        try:
            return keys.unwrap_pair(private_key, key_hex, iv_hex)
        except WrongKey as exc:
            errors.append(exc)
    raise WrongKey("the private key opens neither the user nor the cloud copy of the bundle key")


class _Stop(Exception):
    """A downstream stage failed: finish the current part's check, then quit."""


def _new_pipe() -> Pipe:
    return Pipe(QUEUE_DEPTH, error=_Stop)


def _read_parts(manifest: Manifest, open_part: OpenPart, aes: keys.AesKey, out: Pipe, progress: Progress | None) -> None:
    decryptor = Cipher(algorithms.AES(aes.key), modes.CBC(aes.iv)).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    total = 0
    for part in manifest.parts:
        try:
            f = open_part(part)
        except FileNotFoundError as exc:
            raise MissingPart(part.filename, f"part {part.filename} is missing") from exc
        digest, stopped = hashlib.sha1(), False
        with f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                total += len(chunk)
                if total > manifest.bundled_size:
                    raise SizeMismatch(
                        f"parts are longer than bundled_size {manifest.bundled_size} (at {part.filename})"
                    )
                if progress:
                    progress(len(chunk))
                if not stopped:
                    try:
                        out.put(unpadder.update(decryptor.update(chunk)))
                    except _Stop:
                        stopped = True  # keep hashing this part so tampering is named
        if digest.hexdigest() != part.digest:
            raise TamperedPart(part.filename, f"part {part.filename} is corrupt or tampered (SHA-1 mismatch)")
        if stopped:
            raise _Stop()
    if total != manifest.bundled_size:
        raise SizeMismatch(f"parts hold {total} bytes but bundled_size is {manifest.bundled_size}")
    try:
        tail = unpadder.update(decryptor.finalize()) + unpadder.finalize()
    except ValueError as exc:
        raise CorruptPayload("bad decrypt: AES padding is invalid (wrong key or damaged bundle)") from exc
    out.put(tail)
    out.put(None)


def _gunzip(inp: Pipe, out: Pipe) -> None:
    gz = GunzipStream()
    while (item := inp.get()) is not None:
        data = gz.feed(item)
        if data:
            out.put(data)
    gz.finish()
    out.put(None)


class _TarSource:
    """File-like view of the gunzipped stream that hashes every byte it hands out."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe, self.sha1, self.eof, self.length = pipe, hashlib.sha1(), False, 0
        self.buf, self.pos = b"", 0

    def read(self, n: int = -1) -> bytes:
        need = n if n >= 0 else 1 << 62
        pieces = []
        while need > 0:
            if self.pos >= len(self.buf):
                if self.eof:
                    break
                item = self.pipe.get()
                if item is None:
                    self.eof = True
                    break
                self.buf, self.pos = item, 0
            piece = self.buf[self.pos : self.pos + need]  # copies only what is taken
            self.pos += len(piece)
            need -= len(piece)
            pieces.append(piece)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.sha1.update(data)
        self.length += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _write_image(out: BinaryIO, chunks) -> int:
    """Write the image, seeking over all-zero chunks so sparse images stay sparse."""
    written, hole = 0, False
    for chunk in chunks:
        n = len(chunk)
        if n <= CHUNK and memoryview(chunk) == memoryview(_ZEROS)[:n]:
            out.seek(n, os.SEEK_CUR)
            hole = True
        else:
            out.write(chunk)
            hole = False
        written += n
    if hole:
        out.truncate(written)
    return written


def unbundle_stream(
    manifest: Manifest,
    open_part: OpenPart,
    out: BinaryIO,
    private_key,
    *,
    progress: Progress | None = None,
) -> UnbundleResult:
    """Decrypt and check the bundle, writing the raw image to `out` (seekable)."""
    aes = unwrap_bundle_key(manifest, private_key)
    cipher_pipe, tar_pipe = _new_pipe(), _new_pipe()
    errors: dict[str, BaseException] = {}

    def run(stage: str, fn, *args) -> None:
        try:
            fn(*args)
        except _Stop:
            pass
        except BaseException as exc:
            errors[stage] = exc
            cipher_pipe.cancelled.set()
            tar_pipe.cancelled.set()

    threads = [
        threading.Thread(target=run, args=("parts", _read_parts, manifest, open_part, aes, cipher_pipe, progress),
                         name="unbundle-parts", daemon=True),
        threading.Thread(target=run, args=("gunzip", _gunzip, cipher_pipe, tar_pipe), name="unbundle-gunzip",
                         daemon=True),
    ]
    for t in threads:
        t.start()
    source = _TarSource(tar_pipe)
    member_name, written = "", -1
    try:
        info, chunks = tarstream.first_regular_member(source)
        member_name = info.name
        written = _write_image(out, chunks)
        source.drain()
    except _Stop:
        pass
    except BaseException as exc:
        errors["tar"] = exc
    finally:
        if errors:  # let the other stages stop instead of waiting on a full pipe
            cipher_pipe.cancelled.set()
            tar_pipe.cancelled.set()
        for t in threads:
            t.join()
    for stage in ("parts", "gunzip", "tar"):
        if stage in errors:
            raise errors[stage]
    if source.sha1.hexdigest() != manifest.digest:
        raise DigestMismatch("SHA-1 of the decrypted tar stream does not match image/digest")
    if written != manifest.size:
        raise SizeMismatch(f"image is {written} bytes but the manifest says {manifest.size}")
    return UnbundleResult(manifest, written, member_name)


def read_manifest(path: str | os.PathLike, max_bytes: int = 16 << 20) -> Manifest:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise BundleError(f"manifest {path} not found") from None
    if len(raw) > max_bytes:
        raise manifest_mod.ManifestError(f"manifest {path} is larger than {max_bytes} bytes")
    return manifest_mod.parse(raw)


def image_file_name(manifest: Manifest, manifest_path: Path | None = None) -> str:
    """Destination file name: the manifest's image name, if it is a safe plain name."""
    try:
        return manifest_mod.check_part_name(manifest.name)
    except BundleError:
        if manifest_path is not None and manifest_path.name.endswith(".manifest.xml"):
            return manifest_path.name[: -len(".manifest.xml")]
        return "image"


def unbundle(
    manifest_path: str | os.PathLike,
    destination: str | os.PathLike,
    private_key,
    *,
    source_dir: str | os.PathLike | None = None,
    certificate=None,
    progress: Progress | None = None,
    fsync: bool = True,
) -> tuple[Path, UnbundleResult]:
    """Unbundle a bundle on disk into `destination`/<image name>.

    With `certificate` the signature is verified first (BadSignature if it does
    not match). The image is written to a temporary file that is renamed into
    place only when every check has passed (and, with `fsync`, is on disk: a
    crash then leaves the old file or the complete new one).
    """
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    if certificate is not None:
        manifest.verify_signature(certificate)
    source = Path(source_dir) if source_dir is not None else manifest_path.parent
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / image_file_name(manifest, manifest_path)
    tmp = destination / f".{target.name}.unbundling-{os.getpid()}"

    def open_part(part: PartInfo) -> BinaryIO:
        return open(source / part.filename, "rb")

    try:
        with open(tmp, "wb") as out:
            result = unbundle_stream(manifest, open_part, out, private_key, progress=progress)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target, result


async def unbundle_async(*args, **kwargs):
    """`unbundle` off the event loop."""
    import asyncio

    return await asyncio.to_thread(unbundle, *args, **kwargs)
