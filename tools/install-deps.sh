#!/bin/sh
# Install the Debian packages the tests and the demo need, when they are missing. Runs apt-get
# only as root; otherwise says what is missing and carries on (the tests that need it skip).
set -e
need=""
command -v gcc >/dev/null || need="$need gcc libc6-dev"
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
# the real-Xen harness (tests/realxen): static test programs need libc.a, strip for the domU kernel
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need="$need libc6-dev"
command -v strip >/dev/null || need="$need binutils"
command -v cpio >/dev/null || need="$need cpio"
# the demo and the end-to-end tests: real programs, network namespaces
command -v curl >/dev/null || need="$need curl"
command -v ip >/dev/null || need="$need iproute2"
command -v unshare >/dev/null || need="$need util-linux"
# mwctl: tshark reads `mwctl trace --pcap` files back with the shipped dissector (18 packages,
# no GUI; its debconf question is answered by the noninteractive frontend)
command -v tshark >/dev/null || need="$need tshark"
[ -n "$need" ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install-deps: apt-get install$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
else
    echo "install-deps: missing$need (not root: the tests that need them will skip)"
fi
