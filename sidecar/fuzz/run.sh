#!/bin/sh
# Fuzzes the v2 request parser for a bounded time (default 60 s).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Crashes land in artifacts/request_parser/ and make this script fail.
set -eu
cd "$(dirname "$0")"
seconds="${1:-60}"
mkdir -p corpus/request_parser
exec cargo +nightly fuzz run request_parser corpus/request_parser seeds/request_parser -- \
    -max_total_time="$seconds" -max_len=4096
