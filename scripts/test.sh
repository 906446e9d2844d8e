#!/usr/bin/env bash
# The test command of the README: every tier that runs on one machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
scripts/client-tests.sh
