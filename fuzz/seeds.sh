#!/usr/bin/env bash
# Writes the seed corpora into fuzz/corpus/<target>/ (git-ignored) from valid inputs generated in code
# (examples/seeds.rs). Reproducible: the same seeds every time. Existing corpus files are kept.
set -euo pipefail
cd "$(dirname "$0")"
nice -n 15 cargo +nightly run --quiet --no-default-features --example seeds -- corpus
