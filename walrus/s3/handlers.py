"""The dispatch table: one handler per S3 operation name the router produces."""

from __future__ import annotations

from functools import partial

from . import acl, buckets, copy, listing, multipart, objects

OPERATIONS = {
    "ListBuckets": buckets.list_buckets,
    "CreateBucket": buckets.create_bucket,
    "HeadBucket": buckets.head_bucket,
    "DeleteBucket": buckets.delete_bucket,
    "GetBucketLocation": buckets.get_bucket_location,
    "GetBucketVersioning": buckets.get_bucket_versioning,
    "GetBucketAcl": acl.get_bucket_acl,
    "PutBucketAcl": acl.put_bucket_acl,
    "ListObjects": listing.list_objects,
    "ListObjectsV2": partial(listing.list_objects, v2=True),
    "ListMultipartUploads": listing.list_uploads,
    "PutObject": objects.put_object,
    "GetObject": objects.get_object,
    "HeadObject": partial(objects.get_object, head=True),
    "DeleteObject": objects.delete_object,
    "DeleteObjects": objects.delete_objects,
    "CopyObject": copy.copy_object,
    "GetObjectAcl": acl.get_object_acl,
    "PutObjectAcl": acl.put_object_acl,
    "CreateMultipartUpload": multipart.create_upload,
    "UploadPart": multipart.upload_part,
    "UploadPartCopy": multipart.upload_part_copy,
    "CompleteMultipartUpload": multipart.complete_upload,
    "AbortMultipartUpload": multipart.abort_upload,
    "ListParts": multipart.list_upload_parts,
}
