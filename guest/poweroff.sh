#!/bin/sh
# Clean power-off on an ACPI power-button press; called by acpid and by the init's poller.
mkdir /run/hvd-poweroff 2>/dev/null || exit 0   # only the first caller acts
echo "HVD-GUEST poweroff" >/dev/console
echo "HVD-GUEST poweroff-source ${1:-acpid}" >/dev/console
sync
poweroff -f
