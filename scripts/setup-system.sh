#!/usr/bin/env bash
# Installs the system libraries kensa links against: libjpeg-turbo's TurboJPEG API
# (Debian: libturbojpeg0-dev, found with pkg-config), which decodes JPEGs at reduced scale
# exactly as Pillow does in training. As root with apt it installs them; otherwise it says what
# to install. Re-running is cheap: nothing happens when they are there.
set -euo pipefail

if command -v pkg-config >/dev/null && pkg-config --exists libturbojpeg; then
  exit 0
fi
packages=(libturbojpeg0-dev pkg-config)
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing ${packages[*]} (Debian packages) for JPEG decoding"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
else
  echo "kensa needs libjpeg-turbo's TurboJPEG library and pkg-config to build" >&2
  echo "(Debian/Ubuntu: sudo apt-get install ${packages[*]})" >&2
  exit 1
fi
