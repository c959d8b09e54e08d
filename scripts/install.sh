#!/usr/bin/env bash
# install.sh VENV CNI_BIN_DIR BIN_DIR [PYTHON]
# Installs weft into VENV and puts launchers bound to that venv's interpreter into
# CNI_BIN_DIR (weft, weft-ipam) and BIN_DIR (weftd, weftctl).  Safe to run again.
set -euo pipefail
venv=$1 cni_bin=$2 bin_dir=$3 python=${4:-python3}
src=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# A venv that already runs this very checkout (the dev venv's editable install) is
# used as it is; any other venv gets this source installed (again).
if ! "$venv/bin/python" -c "import cni_plugin, sys; sys.exit(not cni_plugin.__file__.startswith('$src/'))" 2>/dev/null; then
  "$venv/bin/pip" install -q --upgrade "$src"
fi
launch() {  # launch NAME DIR: copy bin/NAME with the venv interpreter, isolated mode
  local tmp
  mkdir -p "$2"
  tmp=$(mktemp "$2/.$1.XXXXXX")
  { echo "#!$venv/bin/python -I"; tail -n +2 "$src/bin/$1"; } > "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$2/$1"
}
launch weft "$cni_bin"
launch weft-ipam "$cni_bin"
launch weftd "$bin_dir"
launch weftctl "$bin_dir"
echo "installed weft into $venv; plugins in $cni_bin; weftd, weftctl in $bin_dir"
