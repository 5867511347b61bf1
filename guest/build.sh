#!/usr/bin/env bash
# Build the hvd test guest images from Debian packages only (our "cirros"):
#   build/guest/hvd-guest.qcow2      prints "HVD-GUEST boot variant=main"
#   build/guest/hvd-guest-alt.qcow2  identical except "variant=alt"
# BIOS -> SYSLINUX on a vfat disk -> Debian cloud kernel -> busybox-static initramfs (guest/init).
# Cached: rebuilds only when guest/* or the kernel/busybox package versions change.
# Needs: busybox-static cpio syslinux syslinux-common mtools dosfstools qemu-utils kmod, and
# apt lists that know linux-image-cloud-amd64 (the .deb is fetched with apt-get download).
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$SRC")
OUT=$ROOT/build/guest
CACHE=$OUT/cache
META=linux-image-cloud-amd64
# virtio, ACPI button and config-drive filesystems are modules in the cloud kernel; insmod order is
# fixed in guest/init, which loads exactly this list.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover
  net_failover virtio_net virtio_blk button evdev fat vfat nls_cp437 nls_ascii nls_utf8
  nls_iso8859-1 cdrom isofs)
DISK_KIB=40960

log() { echo "guest/build.sh: $*" >&2; }

mkdir -p "$CACHE"
chmod 755 "$ROOT/build" "$OUT"   # libvirt-qemu must reach the images through overlays
exec 9>"$OUT/.lock"
flock 9   # concurrent test processes wait for one build

# apt-cache costs ~0.7 s per call here (no pkgcache.bin), so remember which kernel package the
# metapackage resolved to until the apt lists change.
resolve_kernel() {
  local lists_sig resolved=$OUT/kernel.resolved
  lists_sig=$(stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* 2>/dev/null | sha256sum | cut -c1-32)
  if [ -f "$resolved" ] && [ "$(sed -n 1p "$resolved")" = "$lists_sig" ]; then
    { read -r _; read -r KPKG; read -r KVER; } <"$resolved"
    return
  fi
  KPKG=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  KVER=
  [ -n "$KPKG" ] && KVER=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null |
    awk '/^Version:/ {print $2; exit}')
  if [ -z "$KPKG" ] || [ -z "$KVER" ]; then
    # No apt lists (apt-get update never ran): fall back to a kernel .deb already in the cache.
    local deb
    deb=$(ls -t "$CACHE"/linux-image-*.deb 2>/dev/null | head -n 1 || true)
    [ -n "$deb" ] || { log "cannot resolve $META: run apt-get update"; exit 1; }
    KPKG=$(dpkg-deb -f "$deb" Package)
    KVER=$(dpkg-deb -f "$deb" Version)
  fi
  printf '%s\n%s\n%s\n' "$lists_sig" "$KPKG" "$KVER" >"$resolved"
}
resolve_kernel

BUSYBOX=/bin/busybox
BB_VER=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)
STAMP=$({
  cd "$SRC"
  sha256sum build.sh init syslinux.cfg udhcpc.script poweroff.sh
  echo "$KPKG $KVER busybox-static $BB_VER"
} | sha256sum | cut -c1-64)

IMG_MAIN=$OUT/hvd-guest.qcow2
IMG_ALT=$OUT/hvd-guest-alt.qcow2
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && [ -f "$IMG_MAIN" ] && [ -f "$IMG_ALT" ]; then
  exit 0
fi

log "building ($KPKG $KVER)"
for tool in mkfs.vfat mcopy syslinux qemu-img cpio gzip dpkg-deb; do
  command -v "$tool" >/dev/null || { log "missing $tool (see the package list at the top)"; exit 1; }
done
[ -x "$BUSYBOX" ] || { log "missing $BUSYBOX (package busybox-static)"; exit 1; }

WORK=$(mktemp -d "$OUT/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

deb=$(ls "$CACHE/${KPKG}_"*.deb 2>/dev/null | while read -r f; do
  [ "$(dpkg-deb -f "$f" Version)" = "$KVER" ] && echo "$f"; done | head -n 1 || true)
if [ -z "$deb" ]; then
  # apt-get download writes into the current directory; its "_apt cannot access" note is harmless.
  (cd "$CACHE" && apt-get download -q "$KPKG=$KVER" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  deb=$(ls "$CACHE/${KPKG}_"*.deb 2>/dev/null | head -n 1 || true)
  [ -n "$deb" ] || { log "apt-get download $KPKG=$KVER failed"; exit 1; }
fi
dpkg-deb -x "$deb" "$WORK/kernel"
KREL=${KPKG#linux-image-}
VMLINUZ=$WORK/kernel/boot/vmlinuz-$KREL
[ -f "$VMLINUZ" ] || { log "no vmlinuz-$KREL in $deb"; exit 1; }

# initramfs: busybox with all applet links, the init, hooks, and the flat module list
R=$WORK/initramfs
mkdir -p "$R"/{bin,sbin,dev,proc,sys,run,tmp,mnt,etc/acpi/PWRF/00000080,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$R/bin/$applet"
done
install -m 755 "$SRC/init" "$R/init"
install -m 755 "$SRC/udhcpc.script" "$R/etc/udhcpc.script"
install -m 755 "$SRC/poweroff.sh" "$R/etc/hvd-poweroff"
ln -s /etc/hvd-poweroff "$R/etc/acpi/PWRF/00000080/hvd-poweroff"   # run-parts by acpid
for m in "${MODULES[@]}"; do
  ko=$(find "$WORK/kernel/lib/modules/$KREL/kernel" -name "$m.ko" -print -quit)
  [ -n "$ko" ] || { log "module $m.ko not in $KPKG"; exit 1; }
  cp "$ko" "$R/lib/modules/$m.ko"
done
echo "hvd-guest" >"$R/etc/hostname"
# /dev/console lets the kernel hand init a console; init reopens it after devtmpfs if this fails.
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
(cd "$R" && find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$WORK/initrd.img"

# vfat "superfloppy" boot disk with SYSLINUX in its boot sector, like a minimal cloud image
DISK=$WORK/disk.img
mkfs.vfat -C -n HVDBOOT -i 48564430 "$DISK" "$DISK_KIB" >/dev/null
syslinux --install "$DISK"
cp "$VMLINUZ" "$WORK/vmlinuz"
mcopy -i "$DISK" "$WORK/vmlinuz" "$WORK/initrd.img" ::/
for variant in main alt; do
  sed "s/@VARIANT@/$variant/" "$SRC/syslinux.cfg" >"$WORK/syslinux.cfg"
  cp "$DISK" "$WORK/disk-$variant.img"
  mcopy -o -i "$WORK/disk-$variant.img" "$WORK/syslinux.cfg" ::/syslinux.cfg
done
qemu-img convert -c -f raw -O qcow2 "$WORK/disk-main.img" "$WORK/hvd-guest.qcow2" &
qemu-img convert -c -f raw -O qcow2 "$WORK/disk-alt.img" "$WORK/hvd-guest-alt.qcow2"
wait $!
chmod 644 "$WORK"/*.qcow2
# rename(): guests already running keep the old inode open; new starts see the new image
mv -f "$WORK/hvd-guest.qcow2" "$IMG_MAIN"
mv -f "$WORK/hvd-guest-alt.qcow2" "$IMG_ALT"
echo "$STAMP" >"$OUT/stamp"
log "built $IMG_MAIN and $IMG_ALT ($(du -h "$IMG_MAIN" | cut -f1) each)"
