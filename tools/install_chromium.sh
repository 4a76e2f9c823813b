#!/usr/bin/env bash
# Headless Chromium for the tests that open cnnlab's HTML pages as a browser shows them
# (Debian's `chromium` package). Those tests skip, saying why, where it cannot be installed.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "note: not root and no sudo, so chromium is not installed; the browser tests will skip"
    exit 0
fi
SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo -n")
if ! ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium) \
        >/tmp/cnnlab-chromium-install.log 2>&1; then
    echo "note: apt-get could not install chromium (see /tmp/cnnlab-chromium-install.log); the browser tests will skip"
fi
exit 0
