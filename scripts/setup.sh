#!/usr/bin/env bash
# One-command set-up: creates .venv in the repo root, installs everything into it (CPU torch, the model
# stack, pip-only ROS 2 Kilted, eval/finetune/export/habitat extras), builds the ivl_interfaces ROS
# package into the venv, then runs the main job on the embedded default model.
#
#   bash scripts/setup.sh            # set up + main job
#   IVL_SKIP_DEMO=1 bash scripts/setup.sh
#
# Environment knobs:
#   PYTHON=python3.11        interpreter for the venv (3.10-3.12; the ROS wheels need a CPython they ship for)
#   IVL_TORCH_SPEC=...       torch requirement; default torch==2.13.0 (the CPU wheel; on a GPU machine
#                            use e.g. IVL_TORCH_SPEC="torch==2.11.*" with your CUDA index, or "" to keep yours)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IVL_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${IVL_TORCH_SPEC-torch==2.13.0}"
cd "$REPO"

step() { printf '\n== %s\n' "$*"; }

# -- Debian packages (only when root, e.g. CI; otherwise tell the user) -------------------------------
mapfile -t APT_PKGS < <(grep -hv '^\s*#' requirements/apt.txt | sed '/^\s*$/d' | sort -u)
missing=()
for pkg in "${APT_PKGS[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "Missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    fi
fi

# -- venv and Python packages ------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
step "installing Python packages"
"${PIP[@]}" --upgrade pip
if [ -n "$TORCH_SPEC" ]; then
    "${PIP[@]}" "$TORCH_SPEC"
fi
REQS=()
for f in requirements/*.txt; do
    [ "$f" = requirements/apt.txt ] && continue
    REQS+=(-r "$f")
done
"${PIP[@]}" "${REQS[@]}"
# Lines "# post-install: pip install ..." override pins that break things (e.g. pyrender's PyOpenGL).
post_install=$(grep -h '^# post-install: pip install ' requirements/*.txt | sed 's/^# post-install: pip install //' || true)
while read -r spec; do
    spec="${spec//\"/}"  # the lines quote specifiers for copy-pasting into a shell
    # shellcheck disable=SC2086
    [ -n "$spec" ] && "${PIP[@]}" $spec
done <<< "$post_install"
"${PIP[@]}" --no-deps -e .

# -- ROS 2 interfaces (ivl_interfaces) ---------------------------------------------------------------
if [ -f scripts/build_interfaces.sh ]; then
    step "building ivl_interfaces into the venv"
    bash scripts/build_interfaces.sh "$VENV"
fi

# -- main job ----------------------------------------------------------------------------------------
if [ -z "${IVL_SKIP_DEMO:-}" ]; then
    bash scripts/main_job.sh
fi
