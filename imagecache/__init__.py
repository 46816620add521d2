"""imagecache: decrypt each registered bundle once into content-addressed chunks in Walrus.

Public façade; one module per concept:
chunking (FastCDC parameters and cutting), manifest (the image manifest: the contract
with node), fetchplan (coalescing chunk reads into few large ranged GETs), store (the
S3 seam), prepare (the streaming pipeline), cache (ImageCache: prepare, touch, pin,
usage, evict, gc, verify), reader (fetch/reassemble/verify from a manifest), metrics,
errors, cli (`eucalypt imagecache ...`).
"""

from .cache import CacheConfig, EvictResult, ImageCache, ImageInfo, PrepareResult, Usage, manifest_key
from .chunking import DEFAULT_PARAMS, ChunkingParams
from .errors import (
    BundleCorrupt,
    BundleDigestMismatch,
    BundleKeyInvalid,
    BundleManifestInvalid,
    BundleNotFound,
    BundlePartMissing,
    BundlePartTampered,
    BundleSignatureInvalid,
    BundleSizeMismatch,
    ImageCacheError,
    ImageCorrupt,
    ImageManifestInvalid,
    ImageNotFound,
    PrepareFailed,
    StoreError,
)
from .fetchplan import RangeRequest, plan_ranges
from .manifest import ChunkRef, ImageManifest, PackRef
from .metrics import ImageCacheMetrics, PrepareStats
from .reader import fetch_chunks, reassemble, stream_image, verify_image
from .store import BucketStore, Endpoint

__all__ = [
    "BucketStore", "BundleCorrupt", "BundleDigestMismatch", "BundleKeyInvalid", "BundleManifestInvalid",
    "BundleNotFound", "BundlePartMissing", "BundlePartTampered", "BundleSignatureInvalid",
    "BundleSizeMismatch", "CacheConfig", "ChunkRef", "ChunkingParams", "DEFAULT_PARAMS", "Endpoint",
    "EvictResult", "ImageCache", "ImageCacheError", "ImageCacheMetrics", "ImageCorrupt", "ImageInfo",
    "ImageManifest", "ImageManifestInvalid", "ImageNotFound", "PackRef", "PrepareFailed", "PrepareResult",
    "PrepareStats", "RangeRequest", "StoreError", "Usage", "fetch_chunks", "manifest_key", "plan_ranges",
    "reassemble", "stream_image", "verify_image",
]
