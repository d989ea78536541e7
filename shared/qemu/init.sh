#!/bin/busybox sh
# /init of the Hot-Plug Heaven test guest (busybox only). ttyS0: console. ttyS1: control channel:
#   out: INIT-READY; "HP onlined cpuN"; once a second
#        "STAT up=<s> online=<list> running=<procs_running> cpu0=<busy ticks> cpu1=... hz=<ticks per s>";
#        "GOT <line>" as each command line is read; "OUT <line>" for each output line of a command
#   in:  "busy N" (N busy loops; 0 stops them), anything else is run as a shell command.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
CTL=/dev/ttyS1
stty -F $CTL raw -echo 2>/dev/null
# /init holds the port open for the guest's whole life. Every writer below opens and closes it; had no one else
# kept it open, each last close could flush what the host had sent before the command loop opened it (a first
# command lost on a slow boot), so the loop reads from this one descriptor, open before INIT-READY is said.
exec 3<>$CTL

online_all() {
  for f in /sys/devices/system/cpu/cpu[0-9]*/online; do
    [ -f "$f" ] && [ "$(cat "$f")" = 0 ] && echo 1 > "$f" 2>/dev/null
  done
}
online_all

cat > /bin/hp-handler <<'HANDLER'
#!/bin/sh
if [ "$SUBSYSTEM" = cpu ] && [ "$ACTION" = add ] && [ -f "/sys$DEVPATH/online" ]; then
  echo 1 > "/sys$DEVPATH/online" 2>/dev/null
  echo "HP onlined ${DEVPATH##*/}" > /dev/ttyS1
fi
HANDLER
chmod +x /bin/hp-handler
uevent /bin/hp-handler &

stats() {
  while :; do
    online_all
    up=$(cut -d' ' -f1 /proc/uptime)
    on=$(cat /sys/devices/system/cpu/online)
    run=$(awk '/^procs_running/{print $2}' /proc/stat)
    cpus=$(awk '/^cpu[0-9]/{printf "%s=%d ", $1, $2+$3+$4+$7+$8+$9}' /proc/stat)
    echo "STAT up=$up online=$on running=$run ${cpus}hz=100" > $CTL
    sleep 1
  done
}
stats &

LOOPS=""
commands() {
  # One descriptor for the whole loop (init's, see above): reopening the port per line could drop what arrived.
  while read -r line; do
    # Said first: the host holds its connection open until it sees this (send_line in shared/qemu/vm.py).
    echo "GOT $line" > $CTL
    case "$line" in
      "busy "*)
        for p in $LOOPS; do kill "$p" 2>/dev/null; done
        LOOPS=""
        n=${line#busy }
        i=0
        while [ "$i" -lt "$n" ]; do
          ( while :; do :; done ) &
          LOOPS="$LOOPS $!"
          i=$((i + 1))
        done
        echo "OUT busy $n" > $CTL ;;
      "") ;;
      *)
        sh -c "$line" < /dev/null 2>&1 | while read -r out; do echo "OUT $out" > $CTL; done ;;
    esac
  done <&3
}
commands &

echo INIT-READY > /dev/ttyS0
echo INIT-READY > $CTL
while :; do setsid cttyhack sh; done
