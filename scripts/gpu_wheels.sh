#!/usr/bin/env bash
# `make gpu-wheels`: what the GPU check carries to a machine without network.
#   .whl/       one wheel per line of scripts/gpu_wheels.txt, for CPython 3.12 on manylinux
#               x86-64; a package PyPI has only as a source archive (antlr4-python3-runtime
#               4.9.3) is built here into a pure-Python wheel, and refused if it is not pure
#   .gpu_data/  the real Fashion-MNIST .gz files (from `make data`)
# Both folders are ignored by git; the device tool carries them (`carry`), 64 MiB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
WHEELS=.whl
DATA=.gpu_data/fashion-mnist
SOURCE=/usr/share/datasets/fashion-mnist
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)

rm -rf "$WHEELS" && mkdir -p "$WHEELS"
grep -Ev '^\s*(#|$)' scripts/gpu_wheels.txt | while read -r requirement; do
  if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]/#/--platform=}" -d "$WHEELS" "$requirement"; then
    continue
  fi
  echo "no wheel on the index for $requirement: building one"
  before=$(ls "$WHEELS")
  "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$requirement"
  built=$(comm -13 <(echo "$before") <(ls "$WHEELS"))
  case "$built" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
    *) echo "error: $built is not a pure-Python wheel; it would not run on the GPU machine" >&2
       exit 1 ;;
  esac
done
names=$(ls "$WHEELS" | sed 's/-.*//' | sort)
if [ "$(echo "$names" | uniq -d)" != "" ]; then
  echo "error: two versions of one package in $WHEELS: $(echo "$names" | uniq -d)" >&2
  exit 1
fi

mkdir -p "$DATA"
cp "$SOURCE"/*-ubyte.gz "$DATA"/
ls -l "$WHEELS" "$DATA"
echo "carried with the check: $(du -sch "$WHEELS" .gpu_data | tail -1 | cut -f1) (the device tool takes 64 MiB with the tree)"
