#!/usr/bin/env bash
# System packages the test suite uses, from Debian's repositories: PostgreSQL (the tracking server's
# database in tests/test_remote_suite.py) and Chromium (the MLflow UI test). Installs only what is
# missing, so on a machine that has them it does nothing and needs no root.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "system-deps: please install ${missing[*]} (Debian/Ubuntu package names) and re-run" >&2
    exit 1
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "system-deps: installing ${missing[*]} with apt-get" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
