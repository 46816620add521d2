"""euca-bundle-image: bundle a local image file (euca2ools 3.x options)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BundleError
from ..keys import AesKey
from ..manifest import DeviceMapping, MachineConfiguration
from ..progress import progress_bar
from ..writer import DEFAULT_PART_SIZE, BundleResult, BundleSpec, bundle_image
from .common import add_quiet, env_default, load_cert, load_key, run

PROG = "euca-bundle-image"
ARCHES = ("i386", "x86_64", "armhf", "ppc", "ppc64", "ppc64le")


def default_destination() -> str:
    """euca2ools' default: $TMPDIR, $TEMP or $TMP, else /var/tmp."""
    return env_default("TMPDIR", "TEMP", "TMP") or "/var/tmp"


def parse_mappings(text: str) -> tuple[DeviceMapping, ...]:
    """-B ami=sda1,root=/dev/sda1,swap=sda3,ephemeral0=sda2"""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        virtual, sep, device = item.partition("=")
        if not sep or not virtual or not device:
            raise BundleError(f"bad block device mapping {item!r}: expected VIRTUAL=DEVICE")
        out.append(DeviceMapping(virtual, device))
    return tuple(out)


def add_bundle_options(p: argparse.ArgumentParser, *, image_required: bool = True) -> None:
    p.add_argument("-i", "--image", required=image_required, metavar="FILE", help="image file to bundle")
    p.add_argument("-r", "--arch", choices=ARCHES, default="x86_64", help="image architecture")
    p.add_argument("-c", "--cert", default=env_default("EC2_CERT"), help="user certificate (default: $EC2_CERT)")
    p.add_argument("-k", "--privatekey", default=env_default("EC2_PRIVATE_KEY"),
                   help="user private key, signs the manifest (default: $EC2_PRIVATE_KEY)")
    p.add_argument("-u", "--user", default=env_default("EC2_USER_ID"),
                   help="account number of the bundle's owner (default: $EC2_USER_ID)")
    p.add_argument("--ec2cert", default=env_default("EUCALYPTUS_CERT", "EC2_CLOUD_CERT"), metavar="FILE",
                   help="the cloud's certificate (default: $EUCALYPTUS_CERT)")
    p.add_argument("-p", "--prefix", help="bundle file name prefix (default: the image file name)")
    p.add_argument("--kernel", metavar="IMAGE", help="kernel id, or 'true' to bundle a kernel")
    p.add_argument("--ramdisk", metavar="IMAGE", help="ramdisk id, or 'true' to bundle a ramdisk")
    p.add_argument("-B", "--block-device-mappings", metavar="VIRTUAL=DEVICE,...", default="",
                   help="block device mappings of the image, e.g. ami=sda1,root=/dev/sda1")
    p.add_argument("--productcodes", metavar="CODE1,CODE2", default="", help="product codes")
    p.add_argument("--image-type", choices=("machine", "kernel", "ramdisk"), help=argparse.SUPPRESS)
    p.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE, help=argparse.SUPPRESS)
    p.add_argument("--enc-key", help=argparse.SUPPRESS)
    p.add_argument("--enc-iv", help=argparse.SUPPRESS)
    add_quiet(p)


def bundle_from_args(args, destination: str) -> BundleResult:
    """Shared by euca-bundle-image and euca-install-image."""
    if not args.user:
        raise BundleError("missing account number: give -u or set EC2_USER_ID")
    cloud_cert = load_cert(args.ec2cert, "cloud certificate", "--ec2cert", "EUCALYPTUS_CERT")
    user_cert = load_cert(args.cert, "user certificate", "-c", "EC2_CERT")
    private_key = load_key(args.privatekey)
    image = Path(args.image)
    if not image.is_file():
        raise BundleError(f"image {image} does not exist or is not a regular file")
    image_type = args.image_type or (
        "kernel" if (args.kernel or "").lower() == "true"
        else "ramdisk" if (args.ramdisk or "").lower() == "true" else "machine"
    )
    mappings = parse_mappings(args.block_device_mappings)
    if image_type != "machine":
        mappings = ()
    mc = MachineConfiguration(
        architecture=args.arch,
        block_device_mapping=mappings,
        product_codes=tuple(c.strip() for c in args.productcodes.split(",") if c.strip()),
        kernel_id=args.kernel,
        ramdisk_id=args.ramdisk,
    )
    spec = BundleSpec(
        user=args.user,
        prefix=args.prefix or image.name,
        image_type=image_type,
        machine_configuration=mc,
        part_size=args.part_size,
    )
    aes = AesKey.from_hex(args.enc_key, args.enc_iv) if args.enc_key and args.enc_iv else None
    size = image.stat().st_size
    with progress_bar(size, f"Bundling {image.name}", args.quiet) as advance:
        return bundle_image(image, destination, spec, cloud_cert=cloud_cert, user_cert=user_cert,
                            private_key=private_key, aes_key=aes, progress=advance)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Prepare an image for uploading to a cloud")
    add_bundle_options(p)
    p.add_argument("-d", "--destination", default=None, metavar="DIR",
                   help="where to put the bundle (default: $TMPDIR or /var/tmp)")
    args = p.parse_args(argv)

    def body() -> int:
        result = bundle_from_args(args, args.destination or default_destination())
        print(f"Wrote manifest {result.manifest_path}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
