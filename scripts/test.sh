#!/usr/bin/env bash
# The one test command: installs what the suite needs beyond cargo, then runs
# the format check, clippy with warnings as errors, every test, and
# schemathesis against the bundled demo (scripts/schemathesis.sh; it installs
# its pinned schemathesis into a venv under target/, python3 is needed).
# Used by the README's quick start and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# redis-server: the cluster-store tests start their own on a free port.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# python3 with venv: scripts/schemathesis.sh installs schemathesis into a venv.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
# With the OTLP exporter compiled in (feature `otlp`, off by default), so
# its test (tests/otlp.rs) runs too; without OTEL_EXPORTER_OTLP_ENDPOINT the
# feature changes nothing, so this is also the default build's suite.
echo "==> cargo test --features otlp"
cargo test --all-targets --features otlp --locked
echo "==> schemathesis against the demo"
bash scripts/schemathesis.sh
