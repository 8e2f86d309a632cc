#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 with PyTorch + Gloo into a virtualenv.
#
# Horovod 0.28.1 is the last release and asks CMake for C++14, which torch >= 2.1
# headers no longer compile under. We fetch its source distribution from the
# package index, raise the standard to C++17, build a wheel against the torch
# already installed in the environment, and cache that wheel under
# $PYROOPT_CACHE (default ~/.cache/pyroopt) so later installs take seconds.
#
# Usage: scripts/install_horovod.sh PYTHON
set -euo pipefail

HOROVOD_VERSION=0.28.1
PYTHON=${1:?usage: $0 PATH_TO_VENV_PYTHON}
CACHE=${PYROOPT_CACHE:-$HOME/.cache/pyroopt}

fail() { echo "install_horovod: $*" >&2; exit 1; }

torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)') \
  || fail "torch must be installed in $PYTHON's environment before horovod is built"
py_tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# A horovod wheel links against one torch build: key the cache on both.
wheel_dir="$CACHE/horovod-$HOROVOD_VERSION-torch-$torch_version-$py_tag"

if "$PYTHON" -c "import horovod.torch, horovod; assert horovod.__version__ == '$HOROVOD_VERSION'" 2>/dev/null; then
  echo "install_horovod: horovod $HOROVOD_VERSION already installed for torch $torch_version"
  exit 0
fi

if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  echo "install_horovod: building horovod $HOROVOD_VERSION for torch $torch_version (3 to 12 minutes on 2 cores)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "horovod==$HOROVOD_VERSION" \
    || fail "could not download the horovod $HOROVOD_VERSION source distribution"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
    grep -q 'set(CMAKE_CXX_STANDARD 14)' "$f" || fail "expected 'set(CMAKE_CXX_STANDARD 14)' in $f; the source changed"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$f"
  done
  # Horovod's CMake files predate CMake 4, which refuses them: use a 3.x CMake.
  if ! command -v cmake >/dev/null || ! cmake --version | grep -qE 'version 3\.(1[3-9]|[2-9][0-9])'; then
    "$PYTHON" -m pip install --quiet 'cmake>=3.13,<4' || fail "could not install a CMake 3.x to build horovod"
    export PATH="$(dirname "$PYTHON"):$PATH"
  fi
  "$PYTHON" -m pip install --quiet wheel packaging psutil pyyaml cloudpickle \
    || fail "could not install horovod's build requirements"
  mkdir -p "$CACHE"
  if ! HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_GPU_OPERATIONS= \
       MAKEFLAGS="-j$(nproc)" \
       "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" "$src" >"$CACHE/horovod-build.log" 2>&1; then
    tail -n 40 "$CACHE/horovod-build.log" >&2
    fail "building the horovod wheel failed (last lines above; full log in $CACHE/horovod-build.log)"
  fi
  mkdir -p "$wheel_dir"
  cp "$work"/dist/horovod-*.whl "$wheel_dir"/
fi

"$PYTHON" -m pip install --quiet "$wheel_dir"/horovod-*.whl || fail "installing the cached horovod wheel failed"
"$PYTHON" -c "import horovod.torch as hvd; assert hvd.gloo_built(), 'horovod built without gloo'" \
  || fail "horovod installed but horovod.torch does not import with gloo support"
echo "install_horovod: horovod $HOROVOD_VERSION installed from $wheel_dir"
