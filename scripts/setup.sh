#!/usr/bin/env bash
# One idempotent setup step for autopipec-fw (used by both README commands and by .ci/run).
#
#   scripts/setup.sh            the demo stack: .venv (Python 3.13) + pinned Python stack + local eOn runtime
#   scripts/setup.sh --tests    the same, plus what the test suite needs: GPAW, Quantum ESPRESSO, SLURM, munge,
#                               Eigen (for the C++ eOn client the differential tests build), Chromium (headless,
#                               for the dashboard's browser test)
#
# Every step is keyed by a stamp file holding the hash of its inputs, so a second run finishes in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WITH_TESTS=0
[[ "${1:-}" == "--tests" ]] && WITH_TESTS=1

VENV="$ROOT/.venv"
STAMPS="$ROOT/.setup-stamps"
mkdir -p "$STAMPS"
EON_VERSION=3.6.0
EON_SHA256=31a5bc0b21df04fa462eafcdf8bddf1bd20b5bf2d4375ada47c12d4239e24727
GPAW_VERSION=26.7.0

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" > "$STAMPS/$1"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        local sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

find_python313() {
    for c in python3.13 "$HOME/.pyenv/versions/3.13.0/bin/python3.13" /usr/local/bin/python3.13 /usr/bin/python3.13; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local v
        v=$(pyenv versions --bare | grep -E '^3\.13' | tail -1 || true)
        [[ -n "$v" ]] && { echo "$(pyenv root)/versions/$v/bin/python3.13"; return 0; }
    fi
    return 1
}

# 1. system packages
BASE_APT=(ca-certificates)
TEST_APT=(build-essential libeigen3-dev libxc-dev libopenblas-dev liblapack-dev libfftw3-dev
          quantum-espresso quantum-espresso-data slurmctld slurmd slurm-client munge
          chromium)  # chromium: the dashboard's browser test (headless --dump-dom / --screenshot)
apt_install "${BASE_APT[@]}"
((WITH_TESTS)) && apt_install "${TEST_APT[@]}"

# 2. the venv with the pinned stack
PY=$(find_python313) || { echo "setup: Python 3.13 not found (looked on PATH and in pyenv); install it first" >&2; exit 1; }
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
h=$(hash_of requirements/stack.txt)
if ! stamp_ok stack "$h"; then
    log "installing the pinned Python stack (about 2 minutes on a cold cache)"
    "${PIP[@]}" install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
    "${PIP[@]}" install -q -r requirements/stack.txt 2>&1 | grep -v '^WARNING: Location' || true
    # tensorpotential asks for tensorflow[and-cuda] (GBs of CUDA wheels): install it without dependencies.
    "${PIP[@]}" install -q --no-deps tensorpotential==0.6.2.1 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c 'import pyace, fireworks, mongoeco, pyeonclient, tensorpotential' \
        || { echo "setup: the Python stack did not import" >&2; exit 1; }
    stamp_set stack "$h"
fi

# 3. our package (editable)
h=$(hash_of setup.cfg pyproject.toml)
if ! stamp_ok package "$h" || ! "$VENV/bin/python" -c 'import autopipec_fw' 2>/dev/null; then
    log "installing autopipec-fw (editable)"
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v '^WARNING: Location' || true
    stamp_set package "$h"
fi

# 4. the eOn server: pure Python, from the eon-akmc sdist on PyPI (its C++ build is not needed: our client
#    runs on the pyeonclient wheel). Only the eon/ package is kept, under third_party/, put on the venv's path.
EON_DIR="$ROOT/third_party/eon-akmc-$EON_VERSION"
if ! stamp_ok eon "$EON_VERSION-$EON_SHA256" || [[ ! -f "$EON_DIR/eon/server.py" ]]; then
    log "fetching the eOn $EON_VERSION server (pure Python) from PyPI"
    "$VENV/bin/python" -m autopipec_fw.eon.runtime fetch-server \
        --version "$EON_VERSION" --sha256 "$EON_SHA256" --dest "$EON_DIR"
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$EON_DIR" > "$SITE/eon_akmc_server.pth"
    "$VENV/bin/python" -c 'import eon.server' || { echo "setup: eon.server does not import" >&2; exit 1; }
    stamp_set eon "$EON_VERSION-$EON_SHA256"
fi

# 5. test-only: GPAW (serial, built against Debian's libxc/OpenBLAS/FFTW) and its PAW setups
if ((WITH_TESTS)); then
    if ! stamp_ok gpaw "$GPAW_VERSION" || ! "$VENV/bin/python" -c 'import gpaw' 2>/dev/null; then
        log "building GPAW $GPAW_VERSION (serial; about 1 minute)"
        tmp=$(mktemp -d)
        cat > "$tmp/siteconfig.py" <<'PYEOF'
mpi = False
compiler = 'g++'
libraries = ['xc', 'blas', 'fftw3']
fftw = True
scalapack = False
PYEOF
        GPAW_CONFIG="$tmp/siteconfig.py" "${PIP[@]}" install -q --no-cache-dir "gpaw==$GPAW_VERSION" gpaw-data \
            2>&1 | grep -v '^WARNING: Location' || true
        rm -rf "$tmp"
        "$VENV/bin/python" -c 'import gpaw' || { echo "setup: GPAW did not build" >&2; exit 1; }
        stamp_set gpaw "$GPAW_VERSION"
    fi
fi
log "ready: $VENV (run things as $VENV/bin/mlip-auto, or 'source $VENV/bin/activate')"
