#!/bin/sh
# Run the real-Xen tests by hand: Xen 4.17 + Debian dom0 + PV domU under QEMU (see README.md).
#   tests/realxen/run.sh                      every step
#   tests/realxen/run.sh --steps domu-boot    a subset (harness.py -h lists the steps)
#   tests/realxen/run.sh -v                   echo the whole serial console
#   tests/realxen/run.sh --clean              drop the download cache first (a cold run)
# Exit status: 0 all passed or skipped, 1 a step failed, 2 setup error, 3 no boot, 4 no QEMU.
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
make -s                      # .venv with the package installed: dom0 gets its site-packages
tools/install-deps.sh        # qemu-system-x86, gcc (as root)
exec .venv/bin/python tests/realxen/harness.py "$@"
