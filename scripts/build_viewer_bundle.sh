#!/usr/bin/env bash
# Refresh the NiiVue bundle that medcam3d's HTML viewer embeds.
#
#   scripts/build_viewer_bundle.sh            # the version pinned below
#   scripts/build_viewer_bundle.sh 0.70.0     # another version from the npm registry
#
# It installs @niivue/niivue from npm into a temporary folder (no build step: the package ships
# a self-contained UMD bundle, dist/niivue.umd.js, which defines the global `niivue`), copies that
# file into src/medcam3d/viz/assets/niivue/, writes VERSION.json (version, npm integrity, sha256)
# and collects the licence texts of NiiVue and of every package bundled into it into
# THIRD_PARTY_LICENSES.txt. Then run: pytest tests/viz/test_viz_viewer.py
set -euo pipefail

VERSION="${1:-0.69.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/src/medcam3d/viz/assets/niivue"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --omit=dev "@niivue/niivue@$VERSION" >/dev/null
PKG="$WORK/node_modules/@niivue/niivue"
test -f "$PKG/dist/niivue.umd.js" || { echo "dist/niivue.umd.js missing in @niivue/niivue@$VERSION" >&2; exit 1; }
LICENSE_ID="$(node -p "require('$PKG/package.json').license")"
if [ "$LICENSE_ID" != "BSD-2-Clause" ]; then
  echo "@niivue/niivue@$VERSION is licensed '$LICENSE_ID' (expected BSD-2-Clause): update LICENSE by hand" >&2
  exit 1
fi

mkdir -p "$DEST"
cp "$PKG/dist/niivue.umd.js" "$DEST/niivue.umd.js"
INTEGRITY="$(npm view "@niivue/niivue@$VERSION" dist.integrity 2>/dev/null || true)"
SHA256="$(sha256sum "$DEST/niivue.umd.js" | cut -d' ' -f1)"
cat > "$DEST/VERSION.json" <<JSON
{
  "package": "@niivue/niivue",
  "version": "$VERSION",
  "file": "dist/niivue.umd.js",
  "npm_integrity": "$INTEGRITY",
  "sha256": "$SHA256",
  "license": "BSD-2-Clause (see LICENSE and THIRD_PARTY_LICENSES.txt)",
  "homepage": "https://github.com/niivue/niivue"
}
JSON

# Licences of the runtime dependencies that the UMD bundle inlines.
node - "$WORK/node_modules" > "$DEST/THIRD_PARTY_LICENSES.txt" <<'JS'
const fs = require("fs"), path = require("path");
const root = process.argv[2];
const seen = new Set();
function walk(dir) {
  for (const name of fs.readdirSync(dir).sort()) {
    if (name.startsWith(".")) continue;
    const full = path.join(dir, name);
    if (name.startsWith("@")) { walk(full); continue; }
    const pj = path.join(full, "package.json");
    if (!fs.existsSync(pj)) continue;
    const meta = JSON.parse(fs.readFileSync(pj, "utf8"));
    const id = `${meta.name}@${meta.version}`;
    if (seen.has(id) || meta.name === "@niivue/niivue" || /^@(rollup|esbuild)\//.test(meta.name)) continue;
    seen.add(id);
    const files = fs.readdirSync(full).filter((f) => /^(licen[cs]e|copying)/i.test(f));
    const text = files.length ? fs.readFileSync(path.join(full, files[0]), "utf8").trim()
                              : `(no licence file shipped; package.json says: ${JSON.stringify(meta.license)})`;
    process.stdout.write(`==== ${id} (${JSON.stringify(meta.license)}) ====\n${text}\n\n`);
  }
}
process.stdout.write("Packages installed with @niivue/niivue (its bundle inlines those it uses):\n\n");
walk(root);
JS
echo "Bundled @niivue/niivue@$VERSION into $DEST ($(du -h "$DEST/niivue.umd.js" | cut -f1))"
