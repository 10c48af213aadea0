#!/usr/bin/env bash
# Portkey's AI gateway (npm @portkey-ai/gateway) in its own folder (bench/.portkey), for the
# side-by-side run of bench/gateway_mock.py. Needs Node.js 18-22 and npm; the folder holds a
# .gitignore of its own ("*"), so node_modules is never committed.
#
# @hono/node-server and hono are pinned (npm "overrides") to the versions in Portkey's own
# package-lock.json at tag v1.15.2 (1.13.5 and 4.9.7). The published package asks for
# "^1.3.3", which npm resolves to the newest 1.x; with @hono/node-server newer than 1.14.2 every
# streamed answer fails with 500 "Something went wrong" (Portkey-AI/gateway#1389; bench/README.md,
# gateway_mock section, says why).
#
# Idempotent: does nothing when the package and the pins are already there.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=1.15.2
HONO_NODE_SERVER=1.13.5
HONO=4.9.7
DIR=.portkey
PKG=$DIR/node_modules/@portkey-ai/gateway

version_of() { node -p "require('./$DIR/node_modules/$1/package.json').version" 2>/dev/null || true; }

if [ -f "$PKG/build/start-server.js" ] && [ "$(version_of @portkey-ai/gateway)" = "$VERSION" ] \
  && [ "$(version_of @hono/node-server)" = "$HONO_NODE_SERVER" ] && [ "$(version_of hono)" = "$HONO" ]; then
  echo "==> $DIR already has @portkey-ai/gateway $VERSION (@hono/node-server $HONO_NODE_SERVER, hono $HONO)"
  exit 0
fi
command -v node >/dev/null || { echo "node not found: install Node.js 18-22" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm not found" >&2; exit 1; }
echo "==> installing @portkey-ai/gateway@$VERSION into bench/$DIR with node $(node --version)"
mkdir -p "$DIR"
echo '*' > "$DIR/.gitignore"
cat > "$DIR/package.json" <<EOF
{
  "name": "m2a-bench-portkey",
  "private": true,
  "dependencies": {"@portkey-ai/gateway": "$VERSION"},
  "overrides": {"@hono/node-server": "$HONO_NODE_SERVER", "hono": "$HONO"}
}
EOF
rm -f "$DIR/package-lock.json"
# --ignore-scripts: its only install script is `patch-package`, with no patches in the package.
npm install --prefix "$DIR" --no-audit --no-fund --omit=dev --ignore-scripts
echo "==> checking the install"
test -f "$PKG/build/start-server.js"
for pin in "@portkey-ai/gateway $VERSION" "@hono/node-server $HONO_NODE_SERVER" "hono $HONO"; do
  set -- $pin
  [ "$(version_of "$1")" = "$2" ] || { echo "$1 is $(version_of "$1"), not $2" >&2; exit 1; }
done
echo "==> ready: bench/$PKG ($VERSION, @hono/node-server $HONO_NODE_SERVER, hono $HONO)"
