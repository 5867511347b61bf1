#!/usr/bin/env bash
# `make run`: an all-in-one hvd on this machine, ready to boot a VM. Set-up has run already.
# Writes dev-data/hvd.toml once, starts the daemon in the foreground, and on first start
# uploads the test guest image and creates flavors, so `hvd server create` works at once.
set -euo pipefail
cd "$(dirname "$0")/.."
hvd="$PWD/.venv/bin/hvd"  # the venv scripts/setup.sh made
root="$PWD/dev-data"
mkdir -p "$root"
chmod 755 "$root"  # libvirt-qemu must reach the instance disks under it
port="${HVD_PORT:-8774}"
cfg="$root/hvd.toml"
if [ ! -f "$cfg" ]; then
  virt_type=kvm
  # nested KVM hangs guests on VMs like this build machine: use TCG unless told otherwise
  if grep -qw hypervisor /proc/cpuinfo || [ ! -w /dev/kvm ]; then virt_type=qemu; fi
  virt_type="${HVD_VIRT_TYPE:-$virt_type}"
  cat > "$cfg" <<TOML
# written by scripts/run-dev.sh; see hvd.toml.example for every key
[host]
data_dir = "$root/data"
instances_path = "$root/instances"
[api]
listen = "127.0.0.1"
port = $port
[libvirt]
virt_type = "$virt_type"
TOML
  echo "run-dev: wrote $cfg (virt_type = $virt_type)"
fi

"$hvd" daemon -c "$cfg" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "run-dev: the daemon exited"; exit 1; }
  sleep 0.2
done
# shellcheck disable=SC1091
set -a; . "$root/data/openrc"; set +a
if ! "$hvd" image show hvd-guest >/dev/null 2>&1; then
  "$hvd" image create hvd-guest --file build/guest/hvd-guest.qcow2 --disk-format qcow2 --public >/dev/null
  "$hvd" flavor create m1.tiny --vcpus 1 --ram 128 --disk 1 >/dev/null
  "$hvd" flavor create m1.small --vcpus 1 --ram 256 --disk 2 >/dev/null
  echo "run-dev: uploaded image hvd-guest, created flavors m1.tiny and m1.small"
fi
cat <<MSG
hvd is running at $url (pid $pid). Credentials: $root/data/openrc
  export PATH=$PWD/.venv/bin:\$PATH; . $root/data/openrc
  hvd server create vm1 --flavor m1.tiny --image hvd-guest --wait
  hvd server list; hvd server console-log vm1
Ctrl-C stops it.
MSG
wait $pid
