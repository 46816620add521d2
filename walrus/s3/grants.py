"""ACL policy: canned ACLs, ACL documents, and the permission check.

S3 semantics: the owner of a resource may always read and write its ACL; every other
right comes from a grant (to the user, to AllUsers, to AuthenticatedUsers). FULL_CONTROL
implies every permission. `aws-exec-read` (sent by euca-upload-bundle) grants READ to the
cloud's system identity so the image cache can read a user's bundle.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from defusedxml.ElementTree import fromstring as parse_untrusted_xml

from ..storage.records import Acl, Grant
from .errors import S3Error
from .xml import S3_NS, element, text_of, subelement

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
PERMISSIONS = ("FULL_CONTROL", "READ", "WRITE", "READ_ACP", "WRITE_ACP")
XSI = "http://www.w3.org/2001/XMLSchema-instance"

CANNED = ("private", "public-read", "public-read-write", "authenticated-read",
          "bucket-owner-read", "bucket-owner-full-control", "aws-exec-read", "log-delivery-write",
          "ec2-bundle-read")  # Eucalyptus' name for aws-exec-read (euca-upload-bundle --acl)


def canned_acl(name: str, owner_id: str, owner_name: str, *, bucket_owner_id: str = "",
               bucket_owner_name: str = "", system_id: str = "") -> Acl:
    """The grants a canned ACL stands for. Raises InvalidArgument for unknown names."""
    if name not in CANNED:
        raise S3Error("InvalidArgument", f"Invalid canned ACL: {name}",
                      ArgumentName="x-amz-acl", ArgumentValue=name)
    grants = [Grant("CanonicalUser", owner_id, "FULL_CONTROL", owner_name)]
    if name in ("public-read", "public-read-write"):
        grants.append(Grant("Group", ALL_USERS, "READ"))
    if name == "public-read-write":
        grants.append(Grant("Group", ALL_USERS, "WRITE"))
    if name == "authenticated-read":
        grants.append(Grant("Group", AUTHENTICATED_USERS, "READ"))
    if name == "log-delivery-write":
        grants += [Grant("Group", LOG_DELIVERY, "WRITE"), Grant("Group", LOG_DELIVERY, "READ_ACP")]
    if name in ("bucket-owner-read", "bucket-owner-full-control") and bucket_owner_id \
            and bucket_owner_id != owner_id:
        permission = "READ" if name == "bucket-owner-read" else "FULL_CONTROL"
        grants.append(Grant("CanonicalUser", bucket_owner_id, permission, bucket_owner_name))
    if name in ("aws-exec-read", "ec2-bundle-read") and system_id and system_id != owner_id:
        grants.append(Grant("CanonicalUser", system_id, "READ", "eucalypt"))
    return Acl(owner_id, owner_name, tuple(grants))


def allowed(acl: Acl, permission: str, user_id: str | None) -> bool:
    """Does the caller (None = anonymous) hold `permission` on a resource with this ACL?"""
    if user_id is not None and user_id == acl.owner_id and permission in ("READ_ACP", "WRITE_ACP"):
        return True
    for grant in acl.grants:
        if grant.permission not in (permission, "FULL_CONTROL"):
            continue
        if grant.grantee_type == "Group":
            if grant.grantee == ALL_USERS or (grant.grantee == AUTHENTICATED_USERS and user_id):
                return True
        elif user_id is not None and grant.grantee == user_id:
            return True
    return False


def acl_document(acl: Acl) -> ET.Element:
    root = element("AccessControlPolicy")
    owner = subelement(root, "Owner")
    subelement(owner, "ID", acl.owner_id)
    subelement(owner, "DisplayName", acl.owner_name)
    grants = subelement(root, "AccessControlList")
    for grant in acl.grants:
        g = subelement(grants, "Grant")
        grantee = subelement(g, "Grantee")
        grantee.set(f"{{{XSI}}}type", grant.grantee_type)
        if grant.grantee_type == "CanonicalUser":
            subelement(grantee, "ID", grant.grantee)
            if grant.display_name:
                subelement(grantee, "DisplayName", grant.display_name)
        elif grant.grantee_type == "Group":
            subelement(grantee, "URI", grant.grantee)
        else:
            subelement(grantee, "EmailAddress", grant.grantee)
        subelement(g, "Permission", grant.permission)
    return root


def parse_acl_document(body: bytes) -> tuple[str | None, list[Grant]]:
    """(owner id or None, grants) from an AccessControlPolicy body. Raises MalformedACLError."""
    try:
        root = parse_untrusted_xml(body)
    except Exception as exc:  # defusedxml raises several types for hostile or broken XML
        raise S3Error("MalformedACLError") from exc

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    if local(root.tag) != "AccessControlPolicy":
        raise S3Error("MalformedACLError")
    owner_id = None
    grants: list[Grant] = []
    for child in root:
        if local(child.tag) == "Owner":
            owner_id = text_of(child, "ID")
        elif local(child.tag) == "AccessControlList":
            for g in child:
                if local(g.tag) != "Grant":
                    raise S3Error("MalformedACLError")
                grantee = next((c for c in g if local(c.tag) == "Grantee"), None)
                permission = text_of(g, "Permission")
                if grantee is None or permission not in PERMISSIONS:
                    raise S3Error("MalformedACLError")
                kind = grantee.get(f"{{{XSI}}}type", "")
                if kind == "CanonicalUser":
                    grants.append(Grant(kind, text_of(grantee, "ID") or "", permission,
                                        text_of(grantee, "DisplayName") or ""))
                elif kind == "Group":
                    uri = text_of(grantee, "URI") or ""
                    if uri not in (ALL_USERS, AUTHENTICATED_USERS, LOG_DELIVERY):
                        raise S3Error("InvalidArgument", "Invalid group uri",
                                      ArgumentName="uri", ArgumentValue=uri)
                    grants.append(Grant(kind, uri, permission))
                elif kind == "AmazonCustomerByEmail":
                    grants.append(Grant(kind, text_of(grantee, "EmailAddress") or "", permission))
                else:
                    raise S3Error("MalformedACLError")
    return owner_id, grants


def parse_grant_headers(headers, *, resolve) -> list[Grant] | None:
    """x-amz-grant-read: id="...", uri="...", emailAddress="..." → grants (None if absent).
    `resolve(kind, value)` turns a header grantee into (grantee_type, grantee)."""
    mapping = {"x-amz-grant-read": "READ", "x-amz-grant-write": "WRITE",
               "x-amz-grant-read-acp": "READ_ACP", "x-amz-grant-write-acp": "WRITE_ACP",
               "x-amz-grant-full-control": "FULL_CONTROL"}
    grants: list[Grant] = []
    seen = False
    for header, permission in mapping.items():
        value = headers.get(header)
        if value is None:
            continue
        seen = True
        for item in value.split(","):
            kind, eq, raw = item.strip().partition("=")
            if not eq:
                raise S3Error("InvalidArgument", f"Invalid grant: {item.strip()}")
            grants.append(resolve(kind.strip(), raw.strip().strip('"'), permission))
    return grants if seen else None


__all__ = ["ALL_USERS", "AUTHENTICATED_USERS", "CANNED", "S3_NS", "acl_document", "allowed",
           "canned_acl", "parse_acl_document", "parse_grant_headers"]
