#!/usr/bin/env bash
# Makes sure the offline default data (Fashion-MNIST IDX files from Debian's
# dataset-fashion-mnist) is on disk; installs it with apt when that is possible.
set -u
dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist"
    $SUDO apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    [ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
  fi
fi
echo "error: Fashion-MNIST not found in $dir and it could not be installed." >&2
echo "  Install Debian's package: sudo apt-get install dataset-fashion-mnist," >&2
echo "  or put the four IDX .gz files in a folder and set FASHION_MNIST_DIR=that/folder." >&2
exit 2
