#!/bin/busybox sh
# /init of the Hot-Plug Heaven test guest (busybox only). ttyS0: console. ttyS1: control channel:
#   out: INIT-READY; "HP onlined cpuN"; once a second
#        "STAT up=<s> online=<list> running=<procs_running> cpu0=<busy ticks> cpu1=... hz=<ticks per s>
#         mem_total=<kB> mem_avail=<kB> swap_in=<pages> swap_out=<pages> [oom_kill=<OOM kills since boot>]
#         [psi_mem=<some avg10> psi_mem_total=<some total, us>]";
#        "MEM total=<kB>" each time MemTotal changes while memwatch is on;
#        "GOT <line>" as each command line is read; "OUT <line>" for each output line of a command;
#        "PSI cpu stall_us=<us> window_ms=100 running=<runnable tasks>" at once when some runnable task waited at
#         least PSI_STALL_US (30 ms)
#         since the last look, 100 ms before (longer when a loaded guest is late to look), at most one in 500 ms;
#         none where the kernel has no readable /proc/pressure/cpu (Debian's cloud kernel has PSI on: no psi=1)
#   in:  "busy N" (N busy loops; 0 stops them), "memwatch on|off", anything else is run as a shell command.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# virtio_pci, virtio_mem, virtio_balloon and their dependencies, in the order the image builder worked out.
for m in $(cat /lib/modules/load.order 2>/dev/null); do
  insmod /lib/modules/$m.ko 2>/dev/null || echo "insmod $m failed" > /dev/ttyS0
done
# A memory shrink can bring the OOM killer: it must take the work commands start, never this agent (its children
# inherit the score; commands get theirs back below).
echo -1000 > /proc/self/oom_score_adj
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
    # oom_kill: /proc/vmstat's count of OOM kills since boot (Linux 4.13 on); left out where the kernel has none
    mem=$(awk '/^MemTotal:/{t=$2} /^MemAvailable:/{a=$2} /^pswpin /{i=$2} /^pswpout /{o=$2}
      /^oom_kill /{k=" oom_kill=" $2}
      /^some /{split($2, s, "="); split($5, u, "="); p=" psi_mem=" s[2] " psi_mem_total=" u[2]}
      END{printf "mem_total=%d mem_avail=%d swap_in=%d swap_out=%d%s%s", t, a, i, o, k, p}' /proc/meminfo /proc/vmstat $PSI)
    echo "STAT up=$up online=$on running=$run ${cpus}hz=100 $mem" > $CTL
    sleep 1
  done
}
PSI=""
# absent on a kernel without CONFIG_PSI, unreadable when booted with psi=0
cat /proc/pressure/memory > /dev/null 2>&1 && PSI=/proc/pressure/memory
stats &

# CPU pressure as it comes, for a host that wants to act before the next STAT line: every 100 ms, the stall PSI
# counted since the last look (/proc/pressure/cpu's some total, microseconds), and a PSI line when it reaches
# PSI_STALL_US, then at least four quiet looks (500 ms) before the next. busybox sh cannot poll() a PSI trigger,
# so it looks, as neon's in-guest monitor does; every look is the shell's own read (no process). The wait is a
# read -t on a FIFO no one writes: this busybox's sleep is a fork and exec (no NOFORK applets), which ten times a
# second would cost a TCG guest more than the looking. 30 ms, not less: an idle TCG guest's own work (the STAT
# line's processes, a vCPU unplugged: stop_machine and the uevent handler) stalls it 10 to 22 ms in a look, which
# 10 ms would report as pressure (a vCPU plugged back at once); a load step is still seen at the first look 30 ms
# or more after it (at 2 busy loops on 1 vCPU, every ms after the step is a stall).
PSI_STALL_US=30000
psiwatch() {
  mkfifo /tmp/psi.wait
  exec 4<>/tmp/psi.wait
  read -r _ _ _ _ last < /proc/pressure/cpu
  last=${last#total=}
  quiet=0
  while :; do
    read -t 0.1 -u 4 _
    read -r _ _ _ _ total < /proc/pressure/cpu
    total=${total#total=}
    if [ "$quiet" -gt 0 ]; then
      quiet=$((quiet - 1))
    elif [ $((total - last)) -ge $PSI_STALL_US ]; then
      # runnable tasks now (loadavg's 4th field, this shell among them), for a host whose STAT line is older
      read -r _ _ _ runnable _ < /proc/loadavg
      echo "PSI cpu stall_us=$((total - last)) window_ms=100 running=${runnable%/*}" > $CTL
      quiet=4
    fi
    last=$total
  done
}
# absent on a kernel without CONFIG_PSI, unreadable when booted with psi=0
cat /proc/pressure/cpu > /dev/null 2>&1 && psiwatch &

# MemTotal as it moves, polled every 20 ms with the shell's own read (no process per look), for a host that times
# a resize: the STAT line comes once a second. The wait is a read -t on a FIFO no one writes, as psiwatch's below,
# not sleep: this busybox's sleep is a child process, and one left running when memwatch is stopped is handed to
# init, this very shell, whose SIGCHLD when it ends cut a command line being read (a byte lost under load).
memwatch() {
  [ -p /tmp/mem.wait ] || mkfifo /tmp/mem.wait
  exec 5<>/tmp/mem.wait
  last=""
  while :; do
    read -r _ total _ < /proc/meminfo
    if [ "$total" != "$last" ]; then
      echo "MEM total=$total" > $CTL
      last=$total
    fi
    read -t 0.02 -u 5 _
  done
}

# Ends this loop's background children and reaps them before the next command is read. busybox ash's read takes
# a byte at a time and, when a signal cuts it, starts the line again with what it had read thrown away: a child
# dying on its own time (its SIGCHLD) while a line comes in would cut the line's head off.
stop() {
  for p in "$@"; do kill "$p" 2>/dev/null; done
  for p in "$@"; do wait "$p" 2>/dev/null; done
}

LOOPS=""
WATCH=""
commands() {
  # One descriptor for the whole loop (init's, see above): reopening the port per line could drop what arrived.
  while read -r line; do
    # Said first: the host holds its connection open until it sees this (send_line in shared/qemu/vm.py). One
    # write (echo builtin): the port takes each write whole, so no STAT line ends up inside it.
    echo "GOT $line" > $CTL
    case "$line" in
      "busy "*)
        stop $LOOPS
        LOOPS=""
        n=${line#busy }
        i=0
        while [ "$i" -lt "$n" ]; do
          ( while :; do :; done ) &
          LOOPS="$LOOPS $!"
          i=$((i + 1))
        done
        echo "OUT busy $n" > $CTL ;;
      "memwatch "*)
        stop $WATCH
        WATCH=""
        if [ "${line#memwatch }" = on ]; then
          memwatch &
          WATCH=$!
        fi
        echo "OUT $line" > $CTL ;;
      "") ;;
      *)
        # the OOM killer may pick what a command starts (a test's memory hog), as in any guest
        sh -c "echo 0 > /proc/self/oom_score_adj; $line" < /dev/null 2>&1 | while read -r out; do echo "OUT $out" > $CTL; done ;;
    esac
  done <&3
}
commands &

echo INIT-READY > /dev/ttyS0
echo INIT-READY > $CTL
while :; do setsid cttyhack sh; done
