"""Every error imagecache raises, each with a user-visible `reason` and a stable `code`.

    ImageCacheError                    base: `reason` (one line a user can read), `code`
    ├── PrepareFailed                  the bundle cannot become an image; nothing was published
    │   ├── BundleNotFound             no manifest at the bundle location (or not readable by the cloud)
    │   ├── BundleManifestInvalid      the manifest is not a well-formed bundle manifest
    │   ├── BundleSignatureInvalid     the signature does not verify with the registering user's certificate
    │   ├── BundleKeyInvalid           the cloud's private key opens neither wrapped AES key
    │   ├── BundlePartMissing(part)    a part listed in the manifest is absent
    │   ├── BundlePartTampered(part)   a part's SHA-1 differs from the manifest
    │   ├── BundleSizeMismatch         part lengths, bundled_size or the image size disagree
    │   ├── BundleDigestMismatch       the SHA-1 of the decrypted tar stream differs from the manifest
    │   └── BundleCorrupt              bad AES padding, bad gzip, or no readable tar member
    ├── StoreError                     the system bucket (Walrus/S3) failed; transient, retry
    ├── ImageNotFound                  no image manifest for this image id (never prepared, or evicted)
    ├── ImageManifestInvalid           an image manifest in the bucket does not parse or is inconsistent
    └── ImageCorrupt                   a chunk read back does not match its SHA-256 (verify, reader)

`PrepareFailed.code` is what control stores as the image's state reason code and
`reason` the text it shows (`describe-images` StateReason); both say what is wrong
with the *bundle*, in words a user who ran euca-bundle-image can act on.
"""

from __future__ import annotations

import bundletools.errors as bt


class ImageCacheError(Exception):
    code = "internal-error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PrepareFailed(ImageCacheError):
    code = "bundle-invalid"


class BundleNotFound(PrepareFailed):
    code = "bundle-not-found"


class BundleManifestInvalid(PrepareFailed):
    code = "bundle-manifest-invalid"


class BundleSignatureInvalid(PrepareFailed):
    code = "bundle-signature-invalid"


class BundleKeyInvalid(PrepareFailed):
    code = "bundle-key-invalid"


class _PartFailure(PrepareFailed):
    def __init__(self, part: str, reason: str) -> None:
        super().__init__(reason)
        self.part = part


class BundlePartMissing(_PartFailure):
    code = "bundle-part-missing"


class BundlePartTampered(_PartFailure):
    code = "bundle-part-tampered"


class BundleSizeMismatch(PrepareFailed):
    code = "bundle-size-mismatch"


class BundleDigestMismatch(PrepareFailed):
    code = "bundle-digest-mismatch"


class BundleCorrupt(PrepareFailed):
    code = "bundle-corrupt"


class StoreError(ImageCacheError):
    code = "store-error"


class ImageNotFound(ImageCacheError):
    code = "image-not-found"


class ImageManifestInvalid(ImageCacheError):
    code = "image-manifest-invalid"


class ImageCorrupt(ImageCacheError):
    code = "image-corrupt"


def from_bundle_error(exc: bt.BundleError) -> PrepareFailed:
    """Translate a bundletools error into the user-visible failure it stands for."""
    detail = str(exc)
    if isinstance(exc, bt.BadSignature):
        return BundleSignatureInvalid(
            "the bundle manifest's signature does not verify with the registering user's certificate")
    if isinstance(exc, bt.WrongKey):
        return BundleKeyInvalid(
            "the bundle was not encrypted for this cloud (its key does not open with the cloud's private key); "
            "bundle it again with this cloud's cloud-cert.pem")
    if isinstance(exc, bt.MissingPart):
        return BundlePartMissing(exc.part, f"bundle part {exc.part} is missing (or not readable by the cloud: "
                                          f"upload bundles with the aws-exec-read ACL)")
    if isinstance(exc, bt.TamperedPart):
        return BundlePartTampered(exc.part, f"bundle part {exc.part} is corrupt or was modified (SHA-1 mismatch)")
    if isinstance(exc, bt.SizeMismatch):
        return BundleSizeMismatch(f"bundle size mismatch: {detail}")
    if isinstance(exc, bt.DigestMismatch):
        return BundleDigestMismatch("the decrypted image does not match the manifest's SHA-1 digest")
    if isinstance(exc, bt.CorruptPayload):
        return BundleCorrupt(f"the bundle does not decrypt to a readable image: {detail}")
    if isinstance(exc, bt.ManifestError):
        return BundleManifestInvalid(f"the bundle manifest is invalid: {detail}")
    return PrepareFailed(f"the bundle cannot be read: {detail}")
