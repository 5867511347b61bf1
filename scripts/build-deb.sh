#!/usr/bin/env bash
# `make deb`: build build/hvd_<version>_<arch>.deb with dpkg-deb (no debhelper):
#   /opt/hvd                   a virtual environment of Debian's python3 with requirements.lock and hvd
#   /usr/bin/hvd               -> /opt/hvd/bin/hvd
#   /lib/systemd/system/hvd.service   from contrib/systemd
#   /etc/hvd/hvd.toml          conffile, from `hvd config example`
#   /usr/share/doc/hvd/        README.md and docs/
# The venv is built once under build/deb/venv and reused while the lock is unchanged; only hvd
# itself is reinstalled on each build. Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
# Debian's interpreter, never a private build: the package's venv links to it at run time
py_major=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py=/usr/bin/python$py_major
dpkg -S "$py" >/dev/null 2>&1 \
  || { echo "deb: $py does not belong to a Debian package" >&2; exit 1; }
py_pkg="python$py_major"  # the interpreter with its whole standard library
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' hvd/__init__.py)
arch=$(dpkg --print-architecture)
venv="$here/build/deb/venv"
root="$here/build/deb/root"
out="$here/build/hvd_${version}_${arch}.deb"

bash scripts/venv.sh --python "$py" --dir "$venv" --lock requirements.lock --no-editable >&2
PYTHONWARNINGS=ignore "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
  --force-reinstall --no-compile . 2> >(grep -v "is ignored: it is neither" >&2)

rm -rf "$root"
mkdir -p "$root/opt" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/hvd" \
  "$root/usr/share/doc/hvd" "$root/DEBIAN"
cp -a "$venv" "$root/opt/hvd"
rm -f "$root/opt/hvd/.hvd-stamp"
find "$root/opt/hvd" -name __pycache__ -prune -exec rm -rf {} +
# venvs are not relocatable: point the scripts (shebangs, activate) at where the venv will live
grep -rlI --null "$venv" "$root/opt/hvd/bin" "$root/opt/hvd/pyvenv.cfg" | xargs -0 -r sed -i "s|$venv|/opt/hvd|g"
# byte-code compiled now, named by its installed path (/opt is not written at run time)
"$py" -m compileall -q -j0 -s "$root" -p / "$root/opt/hvd/lib" >/dev/null
ln -s /opt/hvd/bin/hvd "$root/usr/bin/hvd"
install -m 0644 contrib/systemd/hvd.service "$root/lib/systemd/system/hvd.service"
{
  echo "# /etc/hvd/hvd.toml — installed by the hvd package (dpkg keeps your changes on upgrade)."
  "$venv/bin/hvd" config example
} > "$root/etc/hvd/hvd.toml"
chmod 0600 "$root/etc/hvd/hvd.toml"  # it will hold the cluster key
install -m 0644 README.md "$root/usr/share/doc/hvd/"
if compgen -G "docs/*.md" >/dev/null; then install -m 0644 docs/*.md "$root/usr/share/doc/hvd/"; fi

cat > "$root/DEBIAN/control" <<EOF
Package: hvd
Version: $version
Architecture: $arch
Maintainer: hvd developers <hvd@localhost>
Section: admin
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Depends: $py_pkg, libvirt0, libvirt-daemon-system, libvirt-daemon-driver-qemu, qemu-system-x86,
 qemu-utils, dnsmasq-base, nftables, iproute2, dosfstools, mtools, procps
Recommends: libxml2-utils, novnc
Description: compute daemon for small virtualization labs
 hvd is OpenStack Nova, with the parts of Keystone, Glance and Neutron a compute
 cloud needs, collapsed into one asyncio process per hypervisor host. The hosts
 form a cluster with an embedded Raft catalog; each builds its virtual machines
 with libvirt, Linux bridges, dnsmasq and qemu-img.
 .
 Python and its dependencies live in their own virtual environment under /opt/hvd.
EOF
echo "/etc/hvd/hvd.toml" > "$root/DEBIAN/conffiles"
# maintainer scripts: systemd only when it runs (not in a chroot or a dpkg --root install)
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable hvd.service >/dev/null || true
  # an upgrade restarts a running daemon; a first install waits for /etc/hvd/hvd.toml to be edited
  if [ -n "$2" ]; then systemctl try-restart hvd.service || true; fi
fi
EOF
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl stop hvd.service || true
fi
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  if [ "$1" = purge ]; then systemctl disable hvd.service >/dev/null 2>&1 || true; fi
  systemctl daemon-reload || true
fi
# the catalog under /var/lib/hvd is kept, even on purge: it is the cluster's state
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
# DEB_COMPRESS: xz for releases (a quarter of the size); the tests pass "-Zgzip -z1" (10x faster)
read -r -a compress <<< "${DEB_COMPRESS:--Zxz -z6}"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$out" >&2
echo "$out"
