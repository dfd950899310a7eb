#!/bin/busybox sh
# /init of the domU of the real-Xen tests: an agent that runs what dom0 asks (see steps.py).
# dom0 writes a shell command to data/xent/cmd-<n> (n = 0, 1, ...); the agent runs it in the
# background and writes data/xent/out-<n> (output tail), then data/xent/rc-<n>. The command
# "poweroff" stops the domain. Relative XenStore paths are under /local/domain/<our domid>/.
/bin/busybox --install -s /bin
export PATH=/xent/bin:/bin:/usr/bin LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

for m in xen-evtchn xen-gntalloc xen-gntdev; do
	insmod /lib/modules/$m.ko || echo "domU: insmod $m failed"
done
hello="kernel $(uname -r), domU uptime $(cut -d' ' -f1 /proc/uptime) s, /dev/xen: $(ls /dev/xen | tr '\n' ' ')"
echo "domU: $hello"
xenstore-write data/xent/hello "$hello" || echo "domU: cannot write data/xent/hello"

run_one() {   # $1 = n, $2 = command
	sh -c "$2" >/tmp/out-$1 2>&1
	rc=$?
	echo "domU: cmd-$1 rc=$rc: $2"
	sed "s/^/domU cmd-$1| /" /tmp/out-$1
	xenstore-write -R data/xent/out-$1 "$(tail -c 1500 /tmp/out-$1)"
	xenstore-write data/xent/rc-$1 "$rc"
}

n=0
while :; do
	if cmd=$(xenstore-read data/xent/cmd-$n 2>/dev/null); then
		[ "$cmd" = poweroff ] && break
		run_one $n "$cmd" &
		n=$((n+1))
	else
		sleep 0.1
	fi
done
echo "domU: poweroff requested, uptime $(cut -d' ' -f1 /proc/uptime) s"
sync
poweroff -f
