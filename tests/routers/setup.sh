#!/usr/bin/env bash
# Installs what the differential router suite's upstream apps need.
# Idempotent and non-interactive (fresh Debian, root, CI=true); a no-op run
# takes well under a second. Prints one line saying what it did.
#   - node/npm missing -> apt-get install nodejs npm (Debian's packages)
#   - node_modules missing or stale vs package-lock.json -> npm ci
#   - pinned Python packages missing or at another version -> pip install -r requirements.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

did=()
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  did+=("apt-get install $*")
}

# --- Node -----------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi

# Stamp = hash of the lock file + node version, written after a successful
# `npm ci`; any change to either (or a missing express) means stale.
stamp_file=node_modules/.pg-setup-stamp
want_stamp="$(sha256sum package-lock.json | cut -d' ' -f1) $(node --version)"
if [ ! -f node_modules/express/package.json ] || [ "$(cat "$stamp_file" 2>/dev/null)" != "$want_stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  printf '%s\n' "$want_stamp" > "$stamp_file"
  did+=("npm ci")
fi

# --- Python ---------------------------------------------------------------
py_ok() {
  python3 - <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
for line in open("requirements.txt"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        if md.version(name) != version:
            sys.exit(1)
    except md.PackageNotFoundError:
        sys.exit(1)
for mod in ("flask", "werkzeug", "starlette", "uvicorn", "h11"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(1)
PY
}

if ! py_ok; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  # Debian's own python3 is "externally managed" (PEP 668); this is a test
  # machine, so install into it anyway.
  if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    export PIP_BREAK_SYSTEM_PACKAGES=1
  fi
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r requirements.txt
  py_ok || { echo "routers setup: pinned Python packages still not importable" >&2; exit 1; }
  did+=("pip install -r requirements.txt")
fi

if [ ${#did[@]} -eq 0 ]; then
  echo "routers setup: nothing to do (node_modules up to date, pinned Python packages present)"
else
  msg="$(IFS=';'; echo "${did[*]}")"
  echo "routers setup: did ${msg//;/, }"
fi
