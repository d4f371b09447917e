#!/usr/bin/env bash
# Builds the {{name}} handler (Rust) into $SLUICE_PLUGINS/{{name}}.wasm,
# by default ../dist/{{name}}.wasm. Adds the wasm32-wasip2 target if missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${SLUICE_PLUGINS:-$here/../dist}")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$here/Cargo.toml"
built="$(cd "$here" && realpath -m "${CARGO_TARGET_DIR:-target}")/wasm32-wasip2/release/{{crate}}.wasm"
# Copy, then rename: a running host never sees half a file.
mkdir -p "$out"
cp "$built" "$out/.{{name}}.wasm.tmp"
mv -f "$out/.{{name}}.wasm.tmp" "$out/{{name}}.wasm"
echo "built $out/{{name}}.wasm"
