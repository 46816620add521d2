"""bundle-tools: euca2ools-compatible image bundles (see shared spec/bundle-format.md).

Public façade; the modules each own one concept:
manifest (model, parse, serialise, signed bytes), keys (PEM, RSA wrap, sign),
tarstream (the tar stage), pgzip (parallel gzip), writer (bundling), reader
(unbundling and every check), s3 (upload/download/delete), cli (the commands).
"""

from .errors import (
    BadSignature,
    BucketNotOwned,
    BundleError,
    CorruptPayload,
    DigestMismatch,
    KeyFileError,
    ManifestError,
    MissingPart,
    SizeMismatch,
    TamperedPart,
    TransferError,
    UnsafePartName,
    WrongKey,
)
from .keys import AesKey, load_certificate, load_private_key
from .manifest import DeviceMapping, MachineConfiguration, Manifest, PartInfo, parse as parse_manifest
from .reader import read_manifest, unbundle, unbundle_async, unbundle_stream, unwrap_bundle_key
from .writer import BundleResult, BundleSpec, bundle_image, bundle_image_async

__all__ = [
    "AesKey", "BadSignature", "BucketNotOwned", "BundleError", "BundleResult", "BundleSpec",
    "CorruptPayload", "DeviceMapping", "DigestMismatch", "KeyFileError", "MachineConfiguration",
    "Manifest", "ManifestError", "MissingPart", "PartInfo", "SizeMismatch", "TamperedPart",
    "TransferError", "UnsafePartName", "WrongKey", "bundle_image", "bundle_image_async",
    "load_certificate", "load_private_key", "parse_manifest", "read_manifest", "unbundle",
    "unbundle_async", "unbundle_stream", "unwrap_bundle_key",
]
