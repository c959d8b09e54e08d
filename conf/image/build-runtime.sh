#!/bin/sh
# build-runtime.sh PREFIX SRC — runs inside the image build (conf/image/Containerfile).
#
# PREFIX/python   Debian's python3.11 with its standard library and every shared library
#                 it and weft's extension modules need besides glibc (RPATH $ORIGIN/../lib),
#                 so the tree runs on a node that has no Python at all
# PREFIX/venv     weft and its dependencies, installed by scripts/install.sh (= make install)
# PREFIX/cni      the weft and weft-ipam launchers the init container copies to /opt/cni/bin
# PREFIX/bin      weftd, weftctl launchers; weft-install (the init container) and
#                 weftd-container (the main container)
# PREFIX/conf     the default conflists
# PREFIX/release  <version>-<content hash>: the directory name on the node
set -eu
prefix=${1:-/opt/weft}
src=${2:-/src}
py=python3.11
rt=$prefix/python

mkdir -p "$rt/bin" "$rt/lib" "$prefix/conf"
cp /usr/bin/$py "$rt/bin/$py"
ln -sf $py "$rt/bin/python3"
cp -a /usr/lib/$py "$rt/lib/$py"
rm -rf "$rt/lib/$py/test" "$rt/lib/$py/idlelib" "$rt/lib/$py/tkinter" "$rt/lib/$py/turtledemo"

# The venv's interpreter is the relocated one; pip comes from Debian's wheel.
"$rt/bin/$py" -m venv --without-pip "$prefix/venv"
for pip_wheel in /usr/share/python-wheels/pip-*.whl; do break; done
"$prefix/venv/bin/python" "$pip_wheel/pip" install -q --no-index \
    --find-links /usr/share/python-wheels pip
if [ -d "$src/.wheels" ]; then          # offline build: every wheel is in the context
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$src/.wheels"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
bash "$src/scripts/install.sh" "$prefix/venv" "$prefix/cni" "$prefix/bin" "$rt/bin/$py"
"$prefix/venv/bin/pip" uninstall -q -y pip

# Shared libraries outside glibc, next to the interpreter.
for file in "$rt/bin/$py" $(find "$prefix" -name '*.so' -o -name '*.so.*' | grep -v "^$rt/lib/lib"); do
  ldd "$file" 2>/dev/null | awk '/=> \// { print $3 }'
done | sort -u | while read -r lib; do
  case ${lib##*/} in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*|libutil.so.*|ld-linux*) ;;
    *) cp -L "$lib" "$rt/lib/" ;;
  esac
done
# shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader, not the shell
patchelf --force-rpath --set-rpath '$ORIGIN/../lib' "$rt/bin/$py"

for script in weft-install weftd-container; do
  cp "$src/conf/image/$script" "$prefix/bin/$script"
  chmod 0755 "$prefix/bin/$script"
done
cp "$src"/conf/*.conflist "$prefix/conf/"
version=$("$prefix/venv/bin/python" -c 'import cni_plugin; print(cni_plugin.__version__)')
digest=$(cd "$prefix" && find . -type f ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
echo "$version-$digest" > "$prefix/release"
