"""The node agent's errors: one type that knows its API code and HTTP status.

    NodeError
    ├── BadRequest            400  malformed or missing parameters
    ├── Unauthorized          401  missing, stale or wrong service signature
    ├── NotFound              404  unknown instance or image
    ├── Conflict              409  instance id already in use, wrong state
    ├── CacheFull             507  the image does not fit under the cache cap (pinned images fill it)
    ├── FetchFailed           502  chunks could not be fetched from any endpoint (after retries)
    ├── ImageCorrupt          502  chunks or the assembled image do not match the manifest
    └── HypervisorError       500  libvirt refused to define/start/destroy a domain
"""

from __future__ import annotations


class NodeError(Exception):
    code = "InternalError"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(NodeError):
    code, status = "BadRequest", 400


class Unauthorized(NodeError):
    code, status = "Unauthorized", 401


class NotFound(NodeError):
    code, status = "NotFound", 404


class Conflict(NodeError):
    code, status = "Conflict", 409


class CacheFull(NodeError):
    code, status = "CacheFull", 507


class FetchFailed(NodeError):
    code, status = "FetchFailed", 502


class ImageCorrupt(NodeError):
    code, status = "ImageCorrupt", 502


class HypervisorError(NodeError):
    code, status = "HypervisorError", 500
