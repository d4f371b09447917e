#!/usr/bin/env bash
# Builds the {{name}} handler (Python) into $SLUICE_PLUGINS/{{name}}.wasm,
# by default ../dist/{{name}}.wasm, with componentize-py: the one on PATH, or
# one installed into .venv/ here on first use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${SLUICE_PLUGINS:-$here/../dist}")"
version=0.25.1
if command -v componentize-py >/dev/null; then
    py=componentize-py
else
    py="$here/.venv/bin/componentize-py"
    if [[ ! -x "$py" ]]; then
        command -v python3 >/dev/null || { echo "build.sh: Python 3 with venv is needed (apt-get install -y python3 python3-venv)" >&2; exit 1; }
        python3 -m venv "$here/.venv"
        "$here/.venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
    fi
fi
mkdir -p "$out"
# Build beside, then rename: a running host never sees half a file.
(cd "$here" && "$py" -d wit -w plugin componentize app -o "$out/.{{name}}.wasm.tmp" >/dev/null)
mv -f "$out/.{{name}}.wasm.tmp" "$out/{{name}}.wasm"
echo "built $out/{{name}}.wasm"
