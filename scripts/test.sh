#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then runs
# every test. Tests start their own servers on loopback; a missing one fails its test loudly.
#   - Azurite (npm package `azurite`), the Azure Storage emulator, for the ADLS Gen2 path.
#   - PostgreSQL and MariaDB servers (Debian packages), started by the database tests on loopback.
#   - psql, Python's psycopg and openssl: the clients and the certificate of the `serve` tests.
#   - polars and deltalake in a venv, the comparison of `cargo bench --bench serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${VITALAKE_TEST_CACHE:-$HOME/.cache/vitalake-test}"
mkdir -p "$cache"

need_apt=()
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v cc >/dev/null || need_apt+=(build-essential)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
command -v mariadbd >/dev/null || need_apt+=(mariadb-server mariadb-client)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v openssl >/dev/null || need_apt+=(openssl)
/usr/bin/python3 -c 'import psycopg' 2>/dev/null || need_apt+=(python3-psycopg)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

azurite_version=3.35.0
if [ ! -x "$cache/azurite-$azurite_version/node_modules/.bin/azurite-blob" ]; then
  npm install --prefix "$cache/azurite-$azurite_version" --no-audit --no-fund --loglevel=error "azurite@$azurite_version"
fi
export PATH="$cache/azurite-$azurite_version/node_modules/.bin:$PATH"

bench_python="$HOME/.cache/vitalake-bench/py"
if [ ! -x "$bench_python/bin/python" ] || ! "$bench_python/bin/python" -c 'import polars, deltalake' 2>/dev/null; then
  /usr/bin/python3 -m venv "$bench_python"
  "$bench_python/bin/pip" install -q --disable-pip-version-check polars==1.35.2 deltalake==1.2.1
fi

cargo test --locked

# Live Azure Event Hubs: only against a real namespace.
if [ -n "${EVENTHUBS_CONNECTION_STRING:-}" ]; then
  cargo test --locked --test it -- --ignored live_azure
else
  echo "live Azure Event Hubs tests: not run (set EVENTHUBS_CONNECTION_STRING to run them)"
fi
