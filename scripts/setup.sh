#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for hvd: packages, Python deps, libvirt daemons.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PKGS=(libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-dev
  pkg-config dnsmasq-base iproute2 nftables busybox-static cpio syslinux syslinux-common mtools
  dosfstools genisoimage kmod libxml2-utils python3-venv python3-dev gcc lvm2 zstd novnc)

missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: a virtual environment (.venv) with the pinned dependencies of requirements-dev.lock and
# an editable install of this checkout; Debian's python3 refuses pip outside one (PEP 668).
# HVD_PYTHON picks the interpreter (default python3: Debian's, or any 3.11+ first on PATH).
bash scripts/venv.sh --python "${HVD_PYTHON:-python3}" --dir .venv --lock requirements-dev.lock

# /dev/kvm must be group kvm mode 660 before libvirtd starts, else libvirt re-probes QEMU on every start.
if [ -e /dev/kvm ]; then
  getent group kvm >/dev/null || groupadd -r kvm
  chgrp kvm /dev/kvm; chmod 660 /dev/kvm
fi

# No systemd here: start virtlogd and libvirtd ourselves when they are not running.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && ! grep -q ') Z ' "/proc/$(cat "$1")/stat" 2>/dev/null; }
if ! alive /run/virtlogd.pid; then virtlogd -d; fi
if ! alive /run/libvirtd.pid; then libvirtd -d; fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null
# block migration and image pools look for a pool by target path
if ! virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
  mkdir -p /var/lib/libvirt/images
  virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
  virsh -c qemu:///system pool-autostart default >/dev/null || true
fi
virsh -c qemu:///system pool-start default >/dev/null 2>&1 || true
echo "setup: ok"
