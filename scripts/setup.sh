#!/usr/bin/env bash
# Prepare a checkout for `make test` and `make demo`. Idempotent and fast when already done:
#   1. (as root) install the Debian packages listed below that are missing;
#   2. create .venv with Python 3.11 if it is missing;
#   3. `pip install -e '.[dev]'` unless .venv already holds this exact pyproject.toml.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- Debian packages the project needs ------------------------------------------------------
# One name per entry. Installed with apt-get only when running as root and missing.
DEBIAN_PACKAGES=(
  python3-venv
  haproxy # the local fleet's load balancer; traffic adapter tests (headway.traffic)
  chromium # web UI browser tests (tests/ui, marker browser) driven by Playwright; bench/ui_speed.py
  prometheus # Prometheus gate tests (tests/metrics): scrapes the sample apps' /metrics
  git # the server follows config.source.git with the git CLI (headway.server.config_git)
)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
fi
if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "warning: Debian packages missing (install them as root): ${missing[*]}"
  fi
fi

# --- Python virtual environment ------------------------------------------------------------
VENV=.venv
STAMP="$VENV/.headway-setup"

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3 /usr/bin/python3.11; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  python=$(find_python) || {
    log "error: Python 3.11 not found; install python3.11 (and python3-venv) or set PYTHON=/path/to/python3.11"
    exit 2
  }
  log "creating $VENV with $python"
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ "$want" != "$have" ]] || ! "$VENV/bin/python" -c 'import headway' 2>/dev/null; then
  log "installing the project and its dev dependencies into $VENV"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[dev]' >"$VENV/pip.log" 2>&1; then
    tail -n 40 "$VENV/pip.log" >&2
    log "error: pip install failed; the full log is $VENV/pip.log"
    exit 2
  fi
  printf '%s\n' "$want" >"$STAMP"
fi
