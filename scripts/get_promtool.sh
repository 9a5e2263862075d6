#!/usr/bin/env bash
# Install promtool (the strict Prometheus exposition-format checker) from Debian's `prometheus`
# package without installing the package itself: `apt-get download` the .deb into a temporary
# directory, unpack it with `dpkg -x` and copy usr/bin/promtool into DEST (default: ~/.cache/llmgw/tools).
# Prints the absolute path of the installed binary on stdout; diagnostics go to stderr.
#
#   PROMTOOL="$(scripts/get_promtool.sh)"   # then: PROMTOOL=... pytest tests/test_metrics.py
#
# Reuses DEST/promtool when it is already there and runs. Needs apt-get and dpkg (Debian/Ubuntu);
# runs `apt-get update` first only if the download fails (a fresh machine has no package lists).
set -euo pipefail

dest="${1:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/llmgw/tools}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

if [ -x "$dest/promtool" ] && "$dest/promtool" --version >/dev/null 2>&1; then
    echo "$dest/promtool"
    exit 0
fi

for tool in apt-get dpkg; do
    command -v "$tool" >/dev/null || { echo "get_promtool: $tool not found (Debian/Ubuntu only)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# _apt cannot write into a private mktemp directory: apt warns and still downloads as root
if ! apt-get download -q prometheus >&2 2>"$work/err"; then
    echo "get_promtool: apt-get download failed ($(tail -n1 "$work/err")); running apt-get update" >&2
    apt-get update -q >&2
    apt-get download -q prometheus >&2
fi
deb="$(ls "$work"/prometheus_*.deb | head -n1)"
dpkg -x "$deb" "$work/root"
install -m 0755 "$work/root/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version >&2
echo "$dest/promtool"
