#!/usr/bin/env bash
# Build the ivl_interfaces package (msg/srv/action) with plain cmake and install it into a pip venv that has the
# pinned Kilted wheels (requirements/ros.txt). No colcon and no sourcing needed afterwards: the libraries land in
# $VENV/lib (put on LD_LIBRARY_PATH by the wheels' bootstrapper) and the Python package in site-packages.
# Idempotent: skipped when the installed hash of the interface sources matches and the package imports.
# Usage: scripts/build_interfaces.sh VENV   (env: IVL_INTERFACES_FORCE=1 to rebuild anyway)
set -euo pipefail
VENV=$(cd "${1:?usage: build_interfaces.sh VENV}" && pwd)
SRC=$(cd "$(dirname "$0")/../ivl_interfaces" && pwd)
PY="$VENV/bin/python"
STAMP="$VENV/share/ivl_interfaces/ivl_interfaces_src.sha256"
[ -x "$PY" ] || { echo "build_interfaces: $PY not found (is $VENV a venv?)" >&2; exit 2; }

# The hash covers everything that changes the generated code.
HASH=$(cd "$SRC" && find msg srv action CMakeLists.txt package.xml -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ "${IVL_INTERFACES_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] \
   && "$PY" -c "import ivl_interfaces.msg, ivl_interfaces.srv, ivl_interfaces.action" 2>/dev/null; then
  echo "build_interfaces: ivl_interfaces up to date in $VENV"
  exit 0
fi

for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "build_interfaces: '$tool' not found (apt-get install cmake g++)" >&2; exit 2; }
done
"$PY" -c "import ament_package, catkin_pkg, rclpy" 2>/dev/null || {
  echo "build_interfaces: the ROS build set is missing; run: $VENV/bin/pip install -r requirements/ros.txt" >&2; exit 2; }

# Workaround: the wheels' exported CMake files hardcode the manylinux build interpreter's include dirs.
# Rewrite them to this venv's Python and numpy headers (a no-op once done; needed again after a wheel reinstall).
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$PY" -c "import numpy; print(numpy.get_include())")
PYVER=$("$PY" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
CPTAG="cp${PYVER/./}-cp${PYVER/./}"
{ grep -rl "/opt/python/$CPTAG/" "$VENV/share" --include='*.cmake' || true; } | xargs -r sed -i \
  -e "s#/opt/python/$CPTAG/include/python$PYVER#$PYINC#g" \
  -e "s#/opt/python/$CPTAG/lib/python$PYVER/site-packages/numpy/_core/include#$NPINC#g"

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
# Workaround: CMake's ament-index lookups (typesupport discovery) need AMENT_PREFIX_PATH at build time only.
export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >"$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log" >&2; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >"$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log" >&2; exit 1; }
cmake --install "$BUILD" >/dev/null
"$PY" -c "from ivl_interfaces.msg import Caption; from ivl_interfaces.srv import Ask; from ivl_interfaces.action import Describe"
echo "$HASH" >"$STAMP"
echo "build_interfaces: ivl_interfaces built and installed into $VENV"
