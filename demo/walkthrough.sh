#!/usr/bin/env bash
# demo/walkthrough.sh [STATE_DIR]   (what `make demo` runs against `make run`'s cloud)
#
# The README walkthrough, as a script: bundle the demo guest's kernel, ramdisk and root
# image with euca-bundle-image, upload them with euca-upload-bundle, register them with
# `aws ec2 register-image`, create a key pair, run an instance with a user-data script,
# and show its console: the guest prints its instance id, the public key and the user
# data's output, all read from the metadata service.
#
# Needs: a running cloud (`eucalypt up --state-dir STATE_DIR`, i.e. `make run`), its admin
# credentials in STATE_DIR/credentials/admin, and the demo guest (built here with
# `eucalypt demo-image`, which downloads Debian packages once).
# Env: DEMO_IMAGES (default STATE_DIR/demo-image), DEMO_WORK (default a temp dir),
#      DEMO_TOKEN (what the user-data script prints; default random), DEMO_KEEP=1 to leave the
#      instance running, DEMO_TIMEOUT (seconds per wait, default 300).
# Prints "DEMO: <key>=<value>" lines that tests (tests/e2e) read.
set -euo pipefail

STATE=${1:-./var}
HERE=$(dirname "$(readlink -f "$0")")
# The project's commands (eucalypt, euca-*, aws) live in its venv after `make setup`.
[ -x "$HERE/../.venv/bin/eucalypt" ] && PATH="$(readlink -f "$HERE/../.venv/bin"):$PATH"
IMAGES=${DEMO_IMAGES:-$STATE/demo-image}
WORK=${DEMO_WORK:-$(mktemp -d /tmp/eucalypt-demo.XXXXXX)}
TOKEN=${DEMO_TOKEN:-token-$RANDOM$RANDOM}
TIMEOUT=${DEMO_TIMEOUT:-300}
BUCKET=demo-bundles-$(date +%s)
say() { echo "DEMO: $*"; }
step() { echo; echo "== $*"; }

# 1. credentials: everything a user needs comes from eucarc
# shellcheck disable=SC1091
source "$STATE/credentials/admin/eucarc"
ec2() { aws --endpoint-url "$EC2_URL" ec2 "$@"; }

until_state() {  # until_state WHAT WANT COMMAND...: poll COMMAND's output until it is WANT
  local what=$1 want=$2 got="" waited=0; shift 2
  while [ "$waited" -lt "$TIMEOUT" ]; do
    got=$("$@" 2>/dev/null || true)
    [ "$got" = "$want" ] && return 0
    case "$got" in failed|terminated) [ "$want" != "$got" ] && break ;; esac
    sleep 2; waited=$((waited + 2))
  done
  echo "$what is '$got', not '$want', after ${waited}s" >&2
  return 1
}

step "the demo guest (kernel, ramdisk, root filesystem from Debian packages)"
eucalypt demo-image "$IMAGES"

step "bundle and upload (euca-bundle-image, euca-upload-bundle)"
euca-bundle-image -i "$IMAGES/vmlinuz" --kernel true -d "$WORK/kernel"
euca-upload-bundle -b "$BUCKET" -m "$WORK/kernel/vmlinuz.manifest.xml"
euca-bundle-image -i "$IMAGES/initrd.img" --ramdisk true -d "$WORK/ramdisk"
euca-upload-bundle -b "$BUCKET" -m "$WORK/ramdisk/initrd.img.manifest.xml"
euca-bundle-image -i "$IMAGES/rootfs.img" -d "$WORK/root"
euca-upload-bundle -b "$BUCKET" -m "$WORK/root/rootfs.img.manifest.xml"

step "register (aws ec2 register-image: kernel, ramdisk, then the machine image using them)"
EKI=$(ec2 register-image --image-location "$BUCKET/vmlinuz.manifest.xml" --name "demo-kernel-$BUCKET" \
      --query ImageId --output text)
ERI=$(ec2 register-image --image-location "$BUCKET/initrd.img.manifest.xml" --name "demo-ramdisk-$BUCKET" \
      --query ImageId --output text)
until_state "$EKI" available ec2 describe-images --image-ids "$EKI" --query 'Images[0].State' --output text
until_state "$ERI" available ec2 describe-images --image-ids "$ERI" --query 'Images[0].State' --output text
EMI=$(ec2 register-image --image-location "$BUCKET/rootfs.img.manifest.xml" --name "demo-$BUCKET" \
      --kernel-id "$EKI" --ramdisk-id "$ERI" --query ImageId --output text)
until_state "$EMI" available ec2 describe-images --image-ids "$EMI" --query 'Images[0].State' --output text
say "kernel=$EKI ramdisk=$ERI image=$EMI"
ec2 describe-images --image-ids "$EKI" "$ERI" "$EMI" --output table \
    --query 'Images[].[ImageId,ImageType,State,Name]'

step "a key pair (aws ec2 create-key-pair)"
KEY=demo-$BUCKET
ec2 create-key-pair --key-name "$KEY" --query KeyMaterial --output text > "$WORK/$KEY.pem"
chmod 600 "$WORK/$KEY.pem"
say "key=$KEY private_key=$WORK/$KEY.pem"

step "run an instance with a user-data script (aws ec2 run-instances)"
printf '#!/bin/sh\necho "user-data says %s"\n' "$TOKEN" > "$WORK/user-data.sh"
INSTANCE=$(ec2 run-instances --image-id "$EMI" --instance-type m1.small --key-name "$KEY" \
           --user-data "file://$WORK/user-data.sh" --query 'Instances[0].InstanceId' --output text)
say "instance=$INSTANCE token=$TOKEN"
until_state "$INSTANCE" running ec2 describe-instances --instance-ids "$INSTANCE" \
    --query 'Reservations[0].Instances[0].State.Name' --output text
ec2 describe-instances --instance-ids "$INSTANCE" --output table \
    --query 'Reservations[0].Instances[0].[InstanceId,State.Name,PrivateIpAddress,Placement.AvailabilityZone]'

step "the console (aws ec2 get-console-output): the guest read all this from the metadata service"
waited=0
until ec2 get-console-output --instance-id "$INSTANCE" --output text 2>/dev/null \
      | grep -q "EUCALYPT-GUEST-READY"; do
  [ "$waited" -ge "$TIMEOUT" ] && { echo "no READY marker on the console after ${TIMEOUT}s" >&2; \
      ec2 get-console-output --instance-id "$INSTANCE" --output text >&2 || true; exit 1; }
  sleep 3; waited=$((waited + 3))
done
ec2 get-console-output --instance-id "$INSTANCE" --output text | grep "EUCALYPT-GUEST\|user-data says"
say "console=ready"

if [ "${DEMO_KEEP:-0}" != 1 ]; then
  step "terminate (aws ec2 terminate-instances)"
  ec2 terminate-instances --instance-ids "$INSTANCE" --output table \
      --query 'TerminatingInstances[0].[InstanceId,CurrentState.Name]'
  until_state "$INSTANCE" terminated ec2 describe-instances --instance-ids "$INSTANCE" \
      --query 'Reservations[0].Instances[0].State.Name' --output text
  say "terminated=$INSTANCE"
fi
say "done"
