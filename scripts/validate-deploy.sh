#!/bin/sh
# Validates deploy/*.yaml against the Kubernetes API schemas with
# kubernetes-validate (PyPI; it bundles the schemas, so it runs offline once
# installed), strictly: an unknown field (a typo like completionMod) fails.
# The tool lives in a venv under $VENV (default: target/kv-venv).
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-target/kv-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q kubernetes-validate
fi
"$VENV/bin/kubernetes-validate" --strict deploy/*.yaml
