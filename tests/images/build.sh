#!/bin/sh
# Rebuild the fault test images tests/images/*.itb from the .its, .dts and
# .txt sources in this folder, with the sample build script (dtc, then
# mkimage -f NAME.its NAME.itb). Works from any folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../emiso/samples/src/build.sh" "$here" "$here"
