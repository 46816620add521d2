#!/usr/bin/env bash
# Install the benchmark's tools, idempotently. Called by bench/run.py; safe to run by hand.
#
#   Debian packages: nginx (built with the stock http_dav_module, for WebDAV PUT), wrk, curl
#   moto server:     bench/.work/moto-venv   (separate venv: moto pins botocore)
#   s3rver:          bench/.work/node        (npm prefix; Node 20 needs --openssl-legacy-provider)
#
# Not root: prints the apt-get line to run and fails. Everything lands in bench/.work/,
# which is git-ignored.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$HERE/.work"
mkdir -p "$WORK"

APT_PACKAGES=(nginx wrk curl nodejs npm)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  # nodejs/npm may come from elsewhere (e.g. a NodeSource build): the binary is enough.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm)    command -v npm  >/dev/null 2>&1 && continue ;;
  esac
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bench/setup: installing ${missing[*]}"
    apt-get update -qq
    # policy-rc.d (or its absence of systemd) keeps the packaged nginx from starting;
    # the bench runs its own nginx on a loopback port.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "bench/setup: please run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# nginx must have the dav module (PUT) compiled in.
if ! nginx -V 2>&1 | grep -q -- '--with-http_dav_module'; then
  echo "bench/setup: this nginx lacks --with-http_dav_module (WebDAV PUT)" >&2
  exit 1
fi

# moto server, in its own venv.
MOTO_VENV="$WORK/moto-venv"
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  echo "bench/setup: installing moto[server] into $MOTO_VENV"
  PY="${PYTHON:-python3}"
  "$PY" -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6'
fi

# py-spy (for `run.py --profile`), in its own small venv.
PROF_VENV="$WORK/prof-venv"
if [ ! -x "$PROF_VENV/bin/py-spy" ]; then
  echo "bench/setup: installing py-spy into $PROF_VENV"
  "${PYTHON:-python3}" -m venv "$PROF_VENV"
  "$PROF_VENV/bin/pip" install -q --disable-pip-version-check py-spy
fi

# s3rver, under a local npm prefix.
NODE_PREFIX="$WORK/node"
if [ ! -x "$NODE_PREFIX/node_modules/.bin/s3rver" ]; then
  echo "bench/setup: installing s3rver into $NODE_PREFIX"
  mkdir -p "$NODE_PREFIX"
  (cd "$NODE_PREFIX" && [ -f package.json ] || echo '{"name":"bench-node","private":true}' > "$NODE_PREFIX/package.json")
  npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error 's3rver@^3' >/dev/null
fi

echo "bench/setup: ok (nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), moto $("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)'), s3rver $(node -p "require('$NODE_PREFIX/node_modules/s3rver/package.json').version"))"
