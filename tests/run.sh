#!/usr/bin/env bash
# The test command: installs the package with its test extras (and, where it can,
# the headless browser the Turing-test UI test drives), then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q -e '.[test]'

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "tests/run.sh: the browser test needs Debian's chromium and chromium-driver;" >&2
        echo "install them (apt-get install chromium chromium-driver) and run again." >&2
        exit 1
    fi
fi

exec python -m pytest "$@"
