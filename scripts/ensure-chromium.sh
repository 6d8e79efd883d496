#!/usr/bin/env bash
# Makes sure headless Chromium is on this machine for the status page's
# browser test (test/e2e TestStatusPageInBrowser): Debian's chromium
# package, installed with apt-get when missing and this runs as root.
# Without it the test is skipped with this message (and fails under CI).
set -euo pipefail
if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then exit 0; fi
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found; installing Debian's chromium package (for the browser test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
     { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
    exit 0
  fi
  echo "chromium could not be installed: the browser test will be skipped" >&2
  exit 0
fi
echo "chromium not found and not root (or no apt-get): install Debian's chromium or set CHROMIUM; the browser test will be skipped" >&2
exit 0
