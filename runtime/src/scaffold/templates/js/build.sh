#!/usr/bin/env bash
# Builds the {{name}} handler (JavaScript) into $SLUICE_PLUGINS/{{name}}.wasm,
# by default ../dist/{{name}}.wasm, with componentize-js: the one on PATH, or
# the one `npm install` puts in node_modules/ here on first use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${SLUICE_PLUGINS:-$here/../dist}")"
if command -v componentize-js >/dev/null; then
    js=componentize-js
else
    js="$here/node_modules/.bin/componentize-js"
    if [[ ! -x "$js" ]]; then
        command -v npm >/dev/null || { echo "build.sh: Node.js 18 or later with npm is needed (apt-get install -y nodejs npm)" >&2; exit 1; }
        npm install --prefix "$here" --no-audit --no-fund --loglevel=error >/dev/null
    fi
fi
mkdir -p "$out"
# No wasi:http or fetch-event: a handler gets HTTP only through the host's
# allow-listed wasi:http. Build beside, then rename: a running host never sees
# half a file.
"$js" "$here/app.js" --wit "$here/wit" -n plugin -d http -d fetch-event -o "$out/.{{name}}.wasm.tmp" >/dev/null
mv -f "$out/.{{name}}.wasm.tmp" "$out/{{name}}.wasm"
echo "built $out/{{name}}.wasm"
