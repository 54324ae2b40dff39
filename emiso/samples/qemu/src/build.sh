#!/bin/sh
# Rebuild the sample images of the qemu agency from their sources:
# assemble and link each PROGRAM.s with PROGRAM.ld using Debian's cross
# binutils, extract the raw binary, compile each NAME.dts with dtc and pack
# each NAME.its with mkimage. The images go to the parent folder
# (emiso/samples/qemu/).
#
# Usage: build.sh    (works from any folder)
# Needs binutils-aarch64-linux-gnu, device-tree-compiler and u-boot-tools.
# SOURCE_DATE_EPOCH sets the FIT timestamp, so rebuilds give the same bytes.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/.." && pwd)
: "${SOURCE_DATE_EPOCH:=1767225600}" # 2026-01-01T00:00:00Z
export SOURCE_DATE_EPOCH
cross=aarch64-linux-gnu-

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for source in "$here"/*.s; do
    name=$(basename "$source" .s)
    "${cross}as" -o "$work/$name.o" "$source"
    "${cross}ld" --no-warn-rwx-segments -T "$here/$name.ld" \
        -o "$work/$name.elf" "$work/$name.o"
    "${cross}objcopy" -O binary "$work/$name.elf" "$work/$name.bin"
done
cp "$here"/*.its "$work"/
for dts in "$here"/*.dts; do
    name=$(basename "$dts" .dts)
    dtc -q -I dts -O dtb -o "$work/$name.dtb" "$dts"
done
for its in "$here"/*.its; do
    name=$(basename "$its" .its)
    (cd "$work" && mkimage -f "$name.its" "$name.itb" >/dev/null)
    cp "$work/$name.itb" "$out/$name.itb"
    echo "built $out/$name.itb"
done
