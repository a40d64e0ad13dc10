#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian 12 machine (run as root).
# Idempotent: every step checks before it acts, so `make install` can run any number of times.
#   - Debian packages: BCC, bpftool, kernel headers, haproxy, iperf3, curl, socat, iproute2, nftables
#   - /lib/modules/$(uname -r)/{build,source} -> the Debian headers (BCC needs both links)
#   - a virtualenv at .venv with the project (editable) and its test dependencies
#   - BCC (a Debian python package) made importable from the venv through a .pth file
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

APT_PKGS=(python3-bpfcc bpfcc-tools libbpfcc bpftool linux-headers-amd64 haproxy iperf3 curl socat
          iproute2 nftables procps psmisc)

log() { printf '[install] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: must run as root (it installs Debian packages and links kernel headers)" >&2
  exit 1
fi

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packaged haproxy/redis services from starting on install
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "${added_policy:-0}" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# BCC compiles against /lib/modules/$(uname -r)/{build,source}; Debian splits headers in -amd64/-common.
K=$(uname -r)
H=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$H" ]; then echo "install.sh: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2; exit 1; fi
mkdir -p "/lib/modules/$K"
[ "$(readlink "/lib/modules/$K/build" || true)" = "$H" ] || ln -sfn "$H" "/lib/modules/$K/build"
[ "$(readlink "/lib/modules/$K/source" || true)" = "${H%-amd64}-common" ] || ln -sfn "${H%-amd64}-common" "/lib/modules/$K/source"

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
  log "pip install -e .[test]"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[test]"
  rm -f .venv/.installed-*; touch "$stamp"
fi

# Only the bcc package (not all of Debian's dist-packages) becomes visible in the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/bccshim
[ -L .venv/bccshim/bcc ] || ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bccshim/bcc
echo "$ROOT/.venv/bccshim" > "$site/clusterlink_bcc.pth"
# The simulated fabric (tests, demo, bench) is not part of the package: the venv sees the source tree.
echo "$ROOT" > "$site/clusterlink_source_tree.pth"

.venv/bin/python - <<'PY'
import bcc, grpc, h11, jwt, pyroute2, cryptography, prometheus_client  # noqa: F401
PY
log "ready"
