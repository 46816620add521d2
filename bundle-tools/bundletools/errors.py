"""Every error bundle-tools raises, so callers (and the CLIs) can tell them apart.

    BundleError                      anything wrong with a bundle or its inputs
    ├── KeyFileError                 a certificate or private key is missing or unreadable
    ├── ManifestError                the manifest is not a well-formed 2007-10-10 manifest
    │   └── UnsafePartName           a part file name contains '/' or '..'
    ├── BadSignature                 <signature> does not verify with the given certificate
    ├── WrongKey                     neither wrapped AES key opens with the given private key
    ├── MissingPart(part)            a part listed in the manifest is absent
    ├── TamperedPart(part)           a part's SHA-1 differs from the manifest
    ├── SizeMismatch                 bundled_size, part lengths or image size disagree
    ├── DigestMismatch               SHA-1 of the tar stream differs from image/digest
    ├── CorruptPayload               bad padding, gzip or tar once the bytes decrypt
    └── TransferError                an S3 upload or download failed or was corrupted
        └── BucketNotOwned           the bucket exists but belongs to someone else
"""

from __future__ import annotations


class BundleError(Exception):
    """Base class: a clear one-line message the CLIs print as is."""


class KeyFileError(BundleError):
    pass


class ManifestError(BundleError):
    pass


class UnsafePartName(ManifestError):
    pass


class BadSignature(BundleError):
    pass


class WrongKey(BundleError):
    pass


class _PartError(BundleError):
    """An error about one named part; `part` is its file name."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


class MissingPart(_PartError):
    pass


class TamperedPart(_PartError):
    pass


class SizeMismatch(BundleError):
    pass


class DigestMismatch(BundleError):
    pass


class CorruptPayload(BundleError):
    pass


class TransferError(BundleError):
    pass


class BucketNotOwned(TransferError):
    pass
