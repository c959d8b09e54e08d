#!/usr/bin/env bash
# install.sh VENV CNI_BIN_DIR BIN_DIR [PYTHON]
# Installs weft into VENV and puts launchers bound to that venv's interpreter into
# CNI_BIN_DIR (weft, weft-ipam) and BIN_DIR (weftd, weftctl).  Safe to run again.
set -euo pipefail
venv=$1 cni_bin=$2 bin_dir=$3 python=${4:-python3}
src=$(cd "$(dirname "$0")/.." && pwd -P)
# The launchers' #! lines name the venv: absolute (make -C changes directory), its
# symlinks kept (/opt/weft may be a symlink switched between releases).
venv=$(realpath -ms "$venv")
# Every question asked of the venv's interpreter below runs isolated (-I: neither the
# current directory nor PYTHONPATH is on sys.path) from /, so a source tree that
# happens to be the caller's directory is never mistaken for an installed weft.
ask() { (cd / && "$venv/bin/python" -I -c "$1"); }

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# The one venv that runs this checkout in place is the dev venv (.venv: an editable
# install, so tests run the code being edited); it is used as it is.  Any other venv
# gets this source built and installed with its dependencies, replacing the weft it
# held (a second run upgrades in place).
if ! ask "import cni_plugin, sys; sys.exit(not cni_plugin.__file__.startswith('$src/'))" 2>/dev/null; then
  # Built from a copy holding only what the package is made of: setuptools builds in
  # the source tree and never prunes its build/lib, so a module moved or deleted in
  # the checkout would otherwise live on in the wheel.  pip always reinstalls a
  # project given as a directory, even at the same version; dependencies are
  # upgraded only when the installed ones are too old.
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  tar -C "$src" --exclude=__pycache__ -cf - pyproject.toml setup.cfg README.md cni_plugin \
    | tar -C "$stage" -xf -
  "$venv/bin/pip" install -q --upgrade "$stage"
fi
pkg_dir=$(ask "import cni_plugin, os; print(os.path.dirname(os.path.dirname(cni_plugin.__file__)))")
# the venv's site-packages (purelib), for the plugins' launchers: appended without site
# processing, so no .pth file (an editable install's import hook) runs on a CNI call
purelib=$(ask "import sysconfig; print(sysconfig.get_paths()['purelib'])")
launch() {  # launch NAME DIR FLAGS: bin/NAME bound to the venv's interpreter
  local tmp
  mkdir -p "$2"
  tmp=$(mkdtemp_in "$2" "$1")
  if [ "$3" = "-IS" ]; then
    # CNI plugins skip site processing (the forwarder needs only built-ins), so the
    # package directory goes on sys.path by hand, and the venv's site-packages after
    # everything (found there only when a verb imports a dependency)
    { echo "#!$venv/bin/python -IS"
      tail -n +2 "$src/bin/$1" | sed "s|^import sys\$|import sys\nsys.path.insert(0, \"$pkg_dir\")\nsys.path.append(\"$purelib\")|"
    } > "$tmp"
  else
    { echo "#!$venv/bin/python $3"; tail -n +2 "$src/bin/$1"; } > "$tmp"
  fi
  chmod 0755 "$tmp"
  mv -f "$tmp" "$2/$1"
}
mkdtemp_in() { mktemp "$1/.$2.XXXXXX"; }
launch weft "$cni_bin" "-IS"
launch weft-ipam "$cni_bin" "-IS"
launch weftd "$bin_dir" "-I"
launch weftctl "$bin_dir" "-I"
echo "installed weft into $venv; plugins in $cni_bin; weftd, weftctl in $bin_dir"
