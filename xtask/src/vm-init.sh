#!/bin/busybox sh
# /init of vm-test's initramfs: mounts what observer needs, loads the sock_diag modules, runs the
# guest's tests (/bin/vm-guest, which reads its parameters from /proc/cmdline), powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
# The observer the test harness in vm-guest runs.
export OBSERVER_BIN=/bin/observer
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "VMT: info cgroup2 mount failed"
ip link set lo up
for m in inet_diag tcp_diag; do
    if [ -f /lib/vmt/$m.ko ]; then
        insmod /lib/vmt/$m.ko || echo "VMT: info insmod $m failed"
    else
        echo "VMT: info module $m.ko missing"
    fi
done
echo "VMT: BEGIN $(uname -r)"
/bin/vm-guest
echo "VMT: END vm-guest exit $?"
sync
poweroff -f
