"""The bundle manifest (version 2007-10-10): model, parser, serialiser, signed bytes.

Parsing goes through defusedxml (manifests come from users). The signature covers
raw substrings of the *stored* file (spec 1.7), so a parsed Manifest keeps the bytes
it came from and verification never looks at a re-serialised DOM. Serialisation is
written by hand to produce exactly euca2ools 3.x's compact form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from . import keys
from .errors import BadSignature, ManifestError, UnsafePartName

MANIFEST_VERSION = "2007-10-10"
UNSIGNED = "UNSIGNED"
XML_DECLARATION = "<?xml version='1.0' encoding='ASCII'?>\n"
EMPTY_SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
IMAGE_TYPES = ("machine", "kernel", "ramdisk")


@dataclass(frozen=True, slots=True)
class PartInfo:
    index: int
    filename: str
    digest: str  # lowercase hex SHA-1 of the part file


@dataclass(frozen=True, slots=True)
class DeviceMapping:
    virtual: str  # ami | root | swap | ephemeralN
    device: str


@dataclass(frozen=True, slots=True)
class MachineConfiguration:
    architecture: str = "x86_64"
    block_device_mapping: tuple[DeviceMapping, ...] = ()
    product_codes: tuple[str, ...] = ()
    kernel_id: str | None = None
    ramdisk_id: str | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    user: str
    image_type: str
    digest: str  # SHA-1 of the uncompressed tar stream
    size: int  # raw image bytes
    bundled_size: int  # ciphertext bytes = sum of parts
    ec2_encrypted_key: str
    user_encrypted_key: str
    ec2_encrypted_iv: str
    user_encrypted_iv: str
    parts: tuple[PartInfo, ...]
    machine_configuration: MachineConfiguration = field(default_factory=MachineConfiguration)
    signature: str = UNSIGNED
    # Our own name: no reader checks it, and a bundle should say who made it.
    bundler_name: str = "eucalypt-bundle-tools"
    bundler_version: str = "0.1.0"
    bundler_release: str = "0"
    version: str = MANIFEST_VERSION
    raw: bytes | None = field(default=None, compare=False, repr=False)  # stored bytes, if parsed

    @property
    def is_signed(self) -> bool:
        return self.signature.strip().upper() != UNSIGNED

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers (from the stored file when parsed)."""
        return signed_bytes(self.raw if self.raw is not None else self.to_bytes())

    def verify_signature(self, certificate) -> None:
        """Raise BadSignature unless the manifest is signed by `certificate`'s key."""
        if not self.is_signed:
            raise BadSignature("manifest is UNSIGNED")
        keys.verify(certificate, self.signed_bytes(), self.signature)

    def signed_with(self, private_key) -> "Manifest":
        """A copy whose signature is made over this manifest's serialised form."""
        unsigned = replace(self, signature=UNSIGNED, raw=None)
        return replace(unsigned, signature=keys.sign(private_key, signed_bytes(unsigned.to_bytes())))

    # -- serialisation --------------------------------------------------------

    def _machine_configuration_xml(self) -> str:
        mc = self.machine_configuration
        out = [f"<machine_configuration><architecture>{escape(mc.architecture)}</architecture>"]
        if mc.block_device_mapping:
            out.append("<block_device_mapping>")
            for m in sorted(mc.block_device_mapping, key=lambda m: m.virtual):
                out.append(
                    f"<mapping><virtual>{escape(m.virtual)}</virtual>"
                    f"<device>{escape(m.device)}</device></mapping>"
                )
            out.append("</block_device_mapping>")
        if mc.product_codes:
            out.append("<product_codes>")
            out.extend(f"<product_code>{escape(c)}</product_code>" for c in mc.product_codes)
            out.append("</product_codes>")
        if mc.kernel_id is not None:
            out.append(f"<kernel_id>{escape(mc.kernel_id)}</kernel_id>")
        if mc.ramdisk_id is not None:
            out.append(f"<ramdisk_id>{escape(mc.ramdisk_id)}</ramdisk_id>")
        out.append("</machine_configuration>")
        return "".join(out)

    def _image_xml(self) -> str:
        parts = "".join(
            f'<part index="{p.index}"><filename>{escape(p.filename)}</filename>'
            f'<digest algorithm="SHA1">{p.digest}</digest></part>'
            for p in self.parts
        )
        return (
            f"<image><name>{escape(self.name)}</name><user>{escape(self.user)}</user>"
            f"<type>{escape(self.image_type)}</type>"
            f'<digest algorithm="SHA1">{self.digest}</digest>'
            f"<size>{self.size}</size><bundled_size>{self.bundled_size}</bundled_size>"
            f'<ec2_encrypted_key algorithm="AES-128-CBC">{self.ec2_encrypted_key}</ec2_encrypted_key>'
            f'<user_encrypted_key algorithm="AES-128-CBC">{self.user_encrypted_key}</user_encrypted_key>'
            f"<ec2_encrypted_iv>{self.ec2_encrypted_iv}</ec2_encrypted_iv>"
            f"<user_encrypted_iv>{self.user_encrypted_iv}</user_encrypted_iv>"
            f'<parts count="{len(self.parts)}">{parts}</parts></image>'
        )

    def to_bytes(self) -> bytes:
        """euca2ools 3.x form: XML declaration, newline, one compact line, no final newline."""
        if self.raw is not None:
            return self.raw
        text = (
            XML_DECLARATION
            + f"<manifest><version>{escape(self.version)}</version>"
            + f"<bundler><name>{escape(self.bundler_name)}</name>"
            + f"<version>{escape(self.bundler_version)}</version>"
            + f"<release>{escape(self.bundler_release)}</release></bundler>"
            + self._machine_configuration_xml()
            + self._image_xml()
            + f"<signature>{escape(self.signature)}</signature></manifest>"
        )
        return text.encode("ascii", "xmlcharrefreplace")


def signed_bytes(raw: bytes) -> bytes:
    """machine_configuration + image, cut from the raw file (spec 1.7).

    A manifest without machine_configuration contributes an empty first half, as
    Amazon's tool does.
    """
    mc = _cut(raw, b"<machine_configuration>", b"</machine_configuration>", required=False)
    image = _cut(raw, b"<image>", b"</image>", required=True)
    return mc + image


def _cut(raw: bytes, start: bytes, end: bytes, *, required: bool) -> bytes:
    i = raw.find(start)
    if i < 0:
        if required:
            raise ManifestError(f"manifest has no {start.decode()} element")
        return b""
    j = raw.find(end, i)
    if j < 0:
        raise ManifestError(f"manifest has no {end.decode()}")
    return raw[i : j + len(end)]


# -- parsing ------------------------------------------------------------------

_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


def check_part_name(name: str) -> str:
    """Part names are resolved next to the manifest: refuse anything path-like."""
    if not name or not _SAFE_NAME.match(name) or ".." in name:
        raise UnsafePartName(f"unsafe part file name in manifest: {name!r}")
    return name


def _text(root: Element, path: str, *, required: bool = True, default: str = "") -> str:
    node = root.find(path)
    if node is None:
        if required:
            raise ManifestError(f"manifest lacks <{path}>")
        return default
    return (node.text or "").strip()


def _int(root: Element, path: str) -> int:
    text = _text(root, path)
    try:
        value = int(text)
    except ValueError:
        raise ManifestError(f"<{path}> is not an integer: {text!r}") from None
    if value < 0:
        raise ManifestError(f"<{path}> is negative")
    return value


def _hexdigest(root: Element, path: str) -> str:
    value = _text(root, path).lower()
    if not re.fullmatch(r"[0-9a-f]{40}", value):
        raise ManifestError(f"<{path}> is not a SHA-1 hex digest")
    return value


def parse(raw: bytes) -> Manifest:
    """Parse stored manifest bytes; the result keeps `raw` for signature checks."""
    try:
        root = safe_et.fromstring(raw, forbid_dtd=True)
    except (safe_et.ParseError, DefusedXmlException, ValueError) as exc:
        raise ManifestError(f"manifest is not valid XML: {exc}") from exc
    if root.tag != "manifest":
        raise ManifestError(f"root element is <{root.tag}>, not <manifest>")
    image = root.find("image")
    if image is None:
        raise ManifestError("manifest lacks <image>")

    mc_node = root.find("machine_configuration")
    mc = MachineConfiguration()
    if mc_node is not None:
        mc = MachineConfiguration(
            architecture=_text(mc_node, "architecture", required=False, default="x86_64"),
            block_device_mapping=tuple(
                DeviceMapping(_text(m, "virtual"), _text(m, "device"))
                for m in mc_node.findall("block_device_mapping/mapping")
            ),
            product_codes=tuple(
                (p.text or "").strip() for p in mc_node.findall("product_codes/product_code")
            ),
            kernel_id=_optional(mc_node, "kernel_id"),
            ramdisk_id=_optional(mc_node, "ramdisk_id"),
        )

    parts_node = image.find("parts")
    if parts_node is None:
        raise ManifestError("manifest lacks <image/parts>")
    by_index: dict[int, PartInfo] = {}
    for node in parts_node.findall("part"):
        try:
            index = int(node.get("index", ""))
        except ValueError:
            raise ManifestError("part without a numeric index") from None
        if index in by_index:
            raise ManifestError(f"part index {index} appears twice")
        by_index[index] = PartInfo(index, check_part_name(_text(node, "filename")), _hexdigest(node, "digest"))
    count_attr = parts_node.get("count")
    if count_attr is not None and count_attr.strip() != str(len(by_index)):
        raise ManifestError(f"parts count={count_attr} but {len(by_index)} parts are listed")
    if sorted(by_index) != list(range(len(by_index))):
        raise ManifestError("part indexes have gaps")
    if not by_index:
        raise ManifestError("manifest lists no parts")

    image_type = _text(image, "type", required=False).lower() or _guess_type(mc)
    if image_type not in IMAGE_TYPES:
        raise ManifestError(f"unknown image type {image_type!r}")

    return Manifest(
        version=_text(root, "version", required=False, default=MANIFEST_VERSION),
        bundler_name=_text(root, "bundler/name", required=False),
        bundler_version=_text(root, "bundler/version", required=False),
        bundler_release=_text(root, "bundler/release", required=False),
        machine_configuration=mc,
        name=_text(image, "name"),
        user=_text(image, "user", required=False),
        image_type=image_type,
        digest=_hexdigest(image, "digest"),
        size=_int(image, "size"),
        bundled_size=_int(image, "bundled_size"),
        ec2_encrypted_key=_text(image, "ec2_encrypted_key", required=False),
        user_encrypted_key=_text(image, "user_encrypted_key", required=False),
        ec2_encrypted_iv=_text(image, "ec2_encrypted_iv", required=False),
        user_encrypted_iv=_text(image, "user_encrypted_iv", required=False),
        parts=tuple(by_index[i] for i in range(len(by_index))),
        signature=_text(root, "signature", required=False, default=UNSIGNED) or UNSIGNED,
        raw=bytes(raw),
    )


def _optional(node: Element, path: str) -> str | None:
    found = node.find(path)
    return None if found is None else (found.text or "").strip()


def _guess_type(mc: MachineConfiguration) -> str:
    """Eucalyptus 4.x rule when <type> is absent: kernel_id/ramdisk_id 'true' mark the kind."""
    if (mc.kernel_id or "").lower() in ("true", "yes"):
        return "kernel"
    if (mc.ramdisk_id or "").lower() in ("true", "yes"):
        return "ramdisk"
    return "machine"


def part_filename(prefix: str, index: int) -> str:
    """euca2ools naming: at least two digits, no fixed width (.part.00 … .part.100)."""
    return f"{prefix}.part.{index:02d}"
