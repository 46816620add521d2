"""Streaming bundle writer: image -> tar -> gzip -> AES-128-CBC -> parts + signed manifest.

One pass over the image, constant memory (a few MiB of blocks in flight), whatever
its size. The stages run concurrently: the calling thread reads the image and hashes
the tar stream, a thread pool gzips blocks (pgzip), and one thread encrypts and
writes the parts. Everything lands in a hidden work directory inside the
destination and is renamed into place at the end, manifest last, so a failure
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import keys, tarstream
from .errors import BundleError
from .manifest import MachineConfiguration, Manifest, PartInfo, check_part_name, part_filename

DEFAULT_PART_SIZE = 10 * 1024 * 1024
BLOCK_SIZE = 1 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class BundleSpec:
    """What goes into the manifest besides the bytes."""

    user: str
    prefix: str
    image_type: str = "machine"
    machine_configuration: MachineConfiguration = field(default_factory=MachineConfiguration)
    part_size: int = DEFAULT_PART_SIZE
    gzip_level: int = 1


@dataclass(frozen=True, slots=True)
class BundleResult:
    manifest: Manifest
    manifest_path: Path
    part_paths: tuple[Path, ...]


class _PartSink:
    """Splits the ciphertext into euca2ools-style parts, hashing each.

    euca2ools 3.x writes floor(B/P)+1 parts: when B is an exact multiple of P the
    last part is empty. We do the same so our output matches theirs exactly.
    """

    def __init__(self, directory: Path, prefix: str, part_size: int) -> None:
        self.directory, self.prefix, self.part_size = directory, prefix, part_size
        self.parts: list[tuple[PartInfo, int]] = []
        self._file = None
        self._hash = None
        self._fill = 0

    def _open(self) -> None:
        name = part_filename(self.prefix, len(self.parts))
        self._file = open(self.directory / name, "wb")
        self._hash, self._fill, self._name = hashlib.sha1(), 0, name

    def _close(self) -> None:
        self._file.close()
        self.parts.append((PartInfo(len(self.parts), self._name, self._hash.hexdigest()), self._fill))
        self._file = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._file is None:
                self._open()
            room = self.part_size - self._fill
            piece = view[:room]
            self._file.write(piece)
            self._hash.update(piece)
            self._fill += len(piece)
            view = view[len(piece):]
            if self._fill == self.part_size:
                self._close()

    def close(self) -> None:
        if self._file is None:  # exact multiple (or nothing at all): the empty last part
            self._open()
        self._close()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()


def _tar_blocks(image: Path, name: str, size_hint: int, tar_hash, progress: Progress | None) -> Iterator[bytes]:
    """The tar stream in ~1 MiB blocks, hashed as it goes (image/digest)."""
    with open(image, "rb") as f:
        size = os.fstat(f.fileno()).st_size if size_hint < 0 else size_hint
        header = tarstream.member_header(name, size)
        tar_hash.update(header)
        yield header
        left = size
        while left:
            chunk = f.read(min(BLOCK_SIZE, left))
            if not chunk:
                raise BundleError(f"{image} shrank while it was being bundled")
            left -= len(chunk)
            tar_hash.update(chunk)
            if progress:
                progress(len(chunk))
            yield chunk
        tail = tarstream.trailer(len(header), size)
        tar_hash.update(tail)
        yield tail


def bundle_image(
    image: str | os.PathLike,
    destination: str | os.PathLike,
    spec: BundleSpec,
    *,
    cloud_cert,
    user_cert=None,
    private_key=None,
    aes_key: keys.AesKey | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> BundleResult:
    """Bundle `image` into `destination`; returns the manifest and written paths.

    `cloud_cert`/`user_cert` are RSA public keys (user_cert None writes empty
    user_encrypted_* like euca2ools without -c); `private_key` None leaves the
    manifest UNSIGNED.
    """
    image, destination = Path(image), Path(destination)
    check_part_name(spec.prefix)
    if spec.part_size <= 0:
        raise BundleError("part size must be positive")
    try:
        size = image.stat().st_size
    except OSError as exc:
        raise BundleError(f"cannot read image {image}: {exc.strerror}") from exc
    if not image.is_file():
        raise BundleError(f"{image} is not a regular file")
    destination.mkdir(parents=True, exist_ok=True)
    aes_key = aes_key or keys.AesKey.generate()
    work = Path(tempfile.mkdtemp(prefix=".bundle-", dir=destination))
    try:
        tar_hash = hashlib.sha1()
        sink = _PartSink(work, spec.prefix, spec.part_size)
        bundled = _run_pipeline(
            _tar_blocks(image, spec.prefix, size, tar_hash, progress),
            sink, aes_key, spec.gzip_level, workers or max(2, os.cpu_count() or 2),
        )
        manifest = Manifest(
            name=spec.prefix,
            user=spec.user.replace("-", ""),
            image_type=spec.image_type,
            machine_configuration=spec.machine_configuration,
            digest=tar_hash.hexdigest(),
            size=size,
            bundled_size=bundled,
            ec2_encrypted_key=keys.wrap(cloud_cert, aes_key.key_hex),
            user_encrypted_key=keys.wrap(user_cert, aes_key.key_hex) if user_cert else "",
            ec2_encrypted_iv=keys.wrap(cloud_cert, aes_key.iv_hex),
            user_encrypted_iv=keys.wrap(user_cert, aes_key.iv_hex) if user_cert else "",
            parts=tuple(p for p, _ in sink.parts),
        )
        if private_key is not None:
            manifest = manifest.signed_with(private_key)
        manifest_name = f"{spec.prefix}.manifest.xml"
        (work / manifest_name).write_bytes(manifest.to_bytes())
        final_parts = []
        for part, _ in sink.parts:
            os.replace(work / part.filename, destination / part.filename)
            final_parts.append(destination / part.filename)
        os.replace(work / manifest_name, destination / manifest_name)
        return BundleResult(manifest, destination / manifest_name, tuple(final_parts))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_pipeline(blocks: Iterator[bytes], sink: _PartSink, aes_key: keys.AesKey, level: int, workers: int) -> int:
    """gzip on a pool, encrypt+write on a thread; returns the ciphertext length."""
    from .pgzip import gzip_blocks

    handoff: queue.Queue = queue.Queue(maxsize=workers * 2)
    failure: list[BaseException] = []
    written = [0]

    def encrypt_and_write() -> None:
        encryptor = Cipher(algorithms.AES(aes_key.key), modes.CBC(aes_key.iv)).encryptor()
        padder = sym_padding.PKCS7(128).padder()
        try:
            while (item := handoff.get()) is not None:
                out = encryptor.update(padder.update(item))
                written[0] += len(out)
                sink.write(out)
            out = encryptor.update(padder.finalize()) + encryptor.finalize()
            written[0] += len(out)
            sink.write(out)
            sink.close()
        except BaseException as exc:  # handed to the calling thread below
            failure.append(exc)
            sink.abort()
            while handoff.get() is not None:  # unblock the producer
                pass

    writer = threading.Thread(target=encrypt_and_write, name="bundle-encrypt", daemon=True)
    writer.start()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="bundle-gzip") as pool:
            for piece in gzip_blocks(blocks, pool, level, ahead=workers * 2):
                if failure:
                    break
                handoff.put(piece)
    finally:
        handoff.put(None)
        writer.join()
    if failure:
        raise failure[0]
    return written[0]


async def bundle_image_async(*args, **kwargs) -> BundleResult:
    """`bundle_image` off the event loop."""
    import asyncio

    return await asyncio.to_thread(bundle_image, *args, **kwargs)
