#!/bin/sh
# Rebuild FIT images (.itb) from their sources. For every NAME.dts in
# SRC_DIR it runs
#     dtc -I dts -O dtb -o NAME.dtb NAME.dts
# and for every NAME.its
#     mkimage -f NAME.its NAME.itb
# in a temporary folder, then copies NAME.itb to OUT_DIR. The .its files
# include the compiled .dtb and the .txt payloads by relative name.
#
# Usage: build.sh [SRC_DIR OUT_DIR]    (works from any folder)
# Without arguments it rebuilds the sample images: the sources are in the
# folder of this script and the images go to its parent (emiso/samples/).
# Needs dtc (device-tree-compiler) and mkimage (u-boot-tools).
# SOURCE_DATE_EPOCH sets the FIT timestamp, so rebuilds give the same bytes.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "${1:-$here}" && pwd)
out=$(cd "${2:-$here/..}" && pwd)
: "${SOURCE_DATE_EPOCH:=1767225600}" # 2026-01-01T00:00:00Z
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$src"/*.its "$src"/*.txt "$work"/
for dts in "$src"/*.dts; do
    name=$(basename "$dts" .dts)
    dtc -q -I dts -O dtb -o "$work/$name.dtb" "$dts"
done
for its in "$src"/*.its; do
    name=$(basename "$its" .its)
    (cd "$work" && mkimage -f "$name.its" "$name.itb" >/dev/null)
    cp "$work/$name.itb" "$out/$name.itb"
    echo "built $out/$name.itb"
done
