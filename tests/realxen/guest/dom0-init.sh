#!/bin/busybox sh
# /init of the dom0 initramfs of the real-Xen tests: bring up the Xen services (modules, xenfs,
# the C xenstored, xen-init-dom0, xenconsoled), report them as step "dom0-xenstored", run the
# payload (steps.py) and power off. Console: hvc0 -> Xen -> com1 -> QEMU stdout.
/bin/busybox --install -s /bin
export PATH=/usr/lib/xen-4.17/bin:/xent/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu
export HOME=/root PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console /var/lib/xen
exec </dev/console >/dev/console 2>&1
# kernel messages below KERN_ALERT stay in dmesg: on the shared console they could land in
# the middle of a result line
echo 2 > /proc/sys/kernel/printk

up() { cut -d' ' -f1 /proc/uptime; }
finish() {
	echo "XENT-BOOT done dom0 uptime $(up) s"
	sync
	poweroff -f     # straight to Xen: nothing to stop cleanly in an initramfs
}
echo "XENT-BOOT dom0-userspace dom0 uptime $(up) s, kernel $(uname -r)"

problem=""
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
	insmod /lib/modules/$m.ko || problem="$problem insmod $m;"
done
mount -t xenfs xenfs /proc/xen || problem="$problem mount xenfs;"
for d in evtchn gntdev gntalloc privcmd xenbus; do
	[ -c /dev/xen/$d ] || problem="$problem no /dev/xen/$d;"
done
xenstored --pid-file /run/xenstored.pid || problem="$problem xenstored rc=$?;"
i=0
while [ ! -S /run/xenstored/socket ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -S /run/xenstored/socket ] || problem="$problem no xenstored socket;"
xen-init-dom0 >/tmp/xen-init-dom0.log 2>&1 || problem="$problem xen-init-dom0 failed: $(tail -1 /tmp/xen-init-dom0.log);"
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console \
	|| problem="$problem xenconsoled rc=$?;"
if [ -z "$problem" ]; then
	echo "XENT PASS dom0-xenstored: $(cat /sys/hypervisor/type) $(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor)$(cat /sys/hypervisor/version/extra), caps $(cat /proc/xen/capabilities), xenstored up at dom0 uptime $(up) s"
	echo "XENT-BOOT xenstored-ready dom0 uptime $(up) s"
else
	echo "XENT FAIL dom0-xenstored:$problem"
	finish
fi

python3 /xent/steps.py
rc=$?
[ $rc = 0 ] || echo "XENT FAIL dom0-python: python3 /xent/steps.py exited rc=$rc"
for f in /var/log/xen/console/guest-*.log; do
	[ -s "$f" ] && sed "s/^/XENT-LOG domU-console| /" "$f" | tail -60
done
echo "XENT-LOG memory: $(free -m | awk '/Mem:/{print "dom0 total "$2" MB, used "$3" MB"}'), Xen free $(xl info 2>/dev/null | awk '/^free_memory/{print $3}') MB"
finish
