#!/usr/bin/env bash
# Wheels of the packages the peers need beyond torch (bench_speed.py --peers), downloaded where there is
# network, into a folder to carry to a machine without it: peers.py installs the missing ones from there
# into the peers' own package folder (pip --no-index --no-deps --target), never into the project's.
#   bash benchmarks/peer_wheels.sh [DIR]        (default DIR: .peer_wheels, git-ignored)
# PYVER: the python of the machine that runs the peers (the H200 image: 3.12). PACKAGES: which ones; the
# default leaves out scipy (35 MB, over the device's carry budget), which the H200 image already holds,
# as it holds psutil, requests and seaborn: there only thop is missing.
set -euo pipefail
DIR=${1:-.peer_wheels}
PYVER=${PYVER:-3.12}
PACKAGES=${PACKAGES:-"thop psutil requests seaborn"}
mkdir -p "$DIR"
# --no-deps: their own dependencies (numpy, pandas, matplotlib, torch, ...) are the project's too
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$DIR" $PACKAGES
ls -l "$DIR"
