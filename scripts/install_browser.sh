#!/usr/bin/env bash
# Headless Chromium + chromedriver for the labelling page's browser test (Debian packages).
# Idempotent; never fails the build: when it cannot install, it says so and the test skips.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "==> browser test: $(chromium --version 2>/dev/null | head -1) and chromedriver already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "==> browser test: chromium not installed and not root (no sudo); the browser test will be skipped"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> browser test: no apt-get here; install chromium + chromedriver yourself, or the browser test is skipped"
  exit 0
fi
echo "==> installing chromium and chromium-driver (apt) for the browser test"
if $SUDO apt-get update -qq >/dev/null 2>&1 &&
   DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; then
  echo "==> browser test: $(chromium --version 2>/dev/null | head -1) installed"
else
  echo "==> browser test: could not install chromium (offline or no permission); the browser test will be skipped"
fi
exit 0
