#!/usr/bin/env bash
# Label Studio (Community Edition) in a virtual environment of its own, for the Label Studio
# integration test (tests/labelstudio). It is a large Django application with pins of its own
# (about 1 GB), so it never shares ntkal's environment: the test runs it as a subprocess and
# talks to it over HTTP only. Idempotent; never fails the build: when it cannot install, it
# says so and the integration test skips with that message.
set -u
LS_VERSION="${LS_VERSION:-1.23.2}"
LS_VENV="${LS_VENV:-.venv-labelstudio}"
PYTHON="${PYTHON:-python3}"
STAMP="$LS_VENV/.label-studio-$LS_VERSION"
TEMPLATE="$LS_VENV/.ntkal-test-template"

# A migrated database with the test's user and token, so that each test run starts Label Studio
# in seconds instead of minutes of migrations (tests/labelstudio/test_labelstudio_integration.py
# makes one itself when this is missing).
make_template() {
  [ -f "$TEMPLATE/label_studio.sqlite3" ] && [ -f "$TEMPLATE/token" ] && return 0
  local tmp token
  tmp="$(mktemp -d "${LS_VENV}/.template.XXXXXX")" || return 0
  token="$("$LS_VENV/bin/python" -c 'import secrets; print(secrets.token_hex(20))')"
  echo "==> preparing a migrated Label Studio database for the tests (about a minute)"
  if LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true LABEL_STUDIO_BASE_DATA_DIR="$tmp/data" \
      LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false \
      SENTRY_DSN= "$LS_VENV/bin/label-studio" init --data-dir "$tmp/data" \
      --username ann@example.com --password ntkal-test-pass --user-token "$token" \
      >"$tmp/log" 2>&1 && [ -f "$tmp/data/label_studio.sqlite3" ]; then
    mkdir -p "$tmp/template" && mv "$tmp/data/label_studio.sqlite3" "$tmp/template/" &&
      printf '%s' "$token" >"$tmp/template/token" && mv "$tmp/template" "$TEMPLATE" 2>/dev/null
  else
    echo "==> Label Studio test: could not prepare its database (the test makes one itself)"
  fi
  rm -rf "$tmp"
  return 0
}

if [ -f "$STAMP" ] && [ -x "$LS_VENV/bin/label-studio" ]; then
  echo "==> Label Studio $LS_VERSION already installed in $LS_VENV"
  make_template
  exit 0
fi
# (`label-studio --version` is not used as a check: it asks PyPI for the latest release and
# waits on the network when there is none.)
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "==> Label Studio test: no $PYTHON here; the Label Studio integration test will be skipped"
  exit 0
fi
if [ ! -x "$LS_VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$LS_VENV" >/dev/null 2>&1; then
    echo "==> Label Studio test: could not create $LS_VENV; the Label Studio integration test will be skipped"
    exit 0
  fi
fi
echo "==> installing label-studio==$LS_VERSION into $LS_VENV (about 1 GB, a few minutes)"
if "$LS_VENV/bin/python" -m pip install -q --disable-pip-version-check "label-studio==$LS_VERSION" \
    && "$LS_VENV/bin/python" -m pip show -q label-studio >/dev/null 2>&1; then
  touch "$STAMP"
  echo "==> Label Studio $LS_VERSION installed in $LS_VENV"
  make_template
else
  echo "==> Label Studio test: could not install label-studio==$LS_VERSION (offline or no space);" \
       "the Label Studio integration test will be skipped"
fi
exit 0
