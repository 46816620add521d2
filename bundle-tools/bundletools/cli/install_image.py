"""euca-install-image: bundle, upload and (when an EC2 endpoint is known) register, in one step."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile

from ..errors import BundleError
from .bundle_image import add_bundle_options, bundle_from_args
from .common import env_default, run
from .upload_bundle import add_upload_options, upload_from_args

PROG = "euca-install-image"


async def register(ec2_url: str, args, location: str) -> str:
    from aiobotocore.session import get_session

    from .common import s3_endpoint

    creds = s3_endpoint(args)
    async with get_session().create_client(
        "ec2", endpoint_url=ec2_url, region_name=creds.region,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
    ) as ec2:
        kwargs = {"ImageLocation": location, "Name": args.name, "Architecture": args.arch}
        if args.description:
            kwargs["Description"] = args.description
        if args.virtualization_type:
            kwargs["VirtualizationType"] = args.virtualization_type
        try:
            reply = await ec2.register_image(**kwargs)
        except Exception as exc:  # botocore raises many kinds; all mean "not registered"
            raise BundleError(f"uploaded to {location} but registration failed: {exc}") from exc
        return reply["ImageId"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Bundle, upload and register an image")
    add_bundle_options(p)
    add_upload_options(p, quiet=False)
    p.add_argument("-n", "--name", help="image name (default: the bundle prefix)")
    p.add_argument("--description")
    p.add_argument("--virtualization-type", choices=("paravirtual", "hvm"))
    p.add_argument("--ec2-url", default=env_default("EC2_URL"), help="EC2 endpoint (default: $EC2_URL)")
    p.add_argument("--no-register", action="store_true", help="stop after the upload")
    args = p.parse_args(argv)

    def body() -> int:
        work = tempfile.mkdtemp(prefix="euca-install-")
        try:
            result = bundle_from_args(args, work)
            location = upload_from_args(args, result.manifest_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        args.name = args.name or result.manifest.name
        if args.no_register or not args.ec2_url:
            print(f"Uploaded {location}")
            if not args.no_register:
                print(f"{PROG}: EC2_URL is not set; register with: aws ec2 register-image "
                      f"--image-location {location} --name {args.name}", file=sys.stderr)
            return 0
        image_id = asyncio.run(register(args.ec2_url, args, location))
        print(f"IMAGE\t{image_id}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
