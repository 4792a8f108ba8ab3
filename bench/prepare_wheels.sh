#!/usr/bin/env bash
# Fill wheels/ (git-ignored) with what a CUDA machine without network needs besides the torch,
# transformers, peft and accelerate it already has, for Python 3.12 on x86-64 Linux:
#
#   bench/prepare_wheels.sh            # here, with network (PyPI)
#   # carry wheels/ to the GPU machine, then there:
#   pip install --no-index --find-links wheels datasets trl bitsandbytes liger-kernel pytest
#   pip install --no-deps --no-build-isolation -e .
#   bench/gpu_check.sh                 # does both installs itself when wheels/ exists
#
# Each package is fetched with --no-deps at the version constraints.txt pins (so nothing pulls
# a second torch: bitsandbytes and liger-kernel depend on torch, which that machine has).
# The list is every dependency of those packages that a torch + transformers + peft + accelerate
# environment lacks; pip install --no-index names any that is missing.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${1:-wheels}
mkdir -p "$DEST"
PACKAGES="datasets pyarrow dill multiprocess xxhash fsspec pandas python-dateutil six tzdata
 aiohttp aiosignal frozenlist multidict yarl propcache attrs aiohappyeyeballs trl bitsandbytes
 liger-kernel pytest iniconfig pluggy psutil setuptools wheel"
for name in $PACKAGES; do
    pinned=$(grep -iE "^${name}==" constraints.txt | head -1 || true)
    spec=${pinned:-$name}
    $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 --platform any \
        --dest "$DEST" "$spec" || echo "warning: could not fetch $spec"
done
ls "$DEST" | wc -l | xargs echo "wheels in $DEST:"
du -sh "$DEST"
