# sandpool-warden: the server's root helper in one container (warden.rs).
#
# Started only by the server's own privileged exec, as
#   /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/nice -n -20
#     /usr/bin/setpriv --inh-caps=-all
#     --bounding-set=-all,+chown,+dac_override,+fowner,+kill,+setgid,+setuid
#     -- /bin/sh -c THIS sandpool-warden UID GID OUT SNIPPET N ENV... [COMMAND...]
# so it runs as root with those capabilities only, a fixed environment, and
# only programs of the read-only image by absolute path: nothing a lease
# wrote ever runs as root here. UID:GID is the sandbox user, OUT the pool's
# output directory, SNIPPET the language's after-reset snippet (run as the
# sandbox user, never as root) and the N ENV "KEY=value" entries its
# environment (the image's). With a COMMAND it runs that one and exits (the
# server's fallback when no warden runs); otherwise it answers one line per
# command line on stdin, and exits when stdin closes (the server went away):
#   ping                 ok PID IDLE
#   kill gid|uid N       ok KILLED      every process with N among its ids
#   signal N SIG         ok SENT        signal SIG to every process with gid N
#   reset                ok | busy N | err WHY   see reset() below
#   discover DIR...      ok DIRS FILES  record what the sandbox user can write
#   install-begin U      ok             pool library dirs owned by uid U
#   install-end U        ok | busy N    U's processes killed, libraries sealed
#   spare PID            ok             the runner host (a root process the
#                                       server started): never killed or counted
# The sandbox user can neither signal, trace nor replace it (another uid,
# no capabilities of its own).

umask 022
uid=$1 gid=$2 out=$3 snippet=$4 n=$5
shift 5
state=/opt/sandpool/.warden
libs=/opt/sandpool/lib
install_home=/opt/sandpool/.install
self=$$
# Never a fork: a fork bomb may hold every pid the container may have.
[ -d "$state" ] || mkdir -m 700 "$state" 2>/dev/null
idle= host=
{ read -r idle <"$state/idle"; } 2>/dev/null
{ read -r host <"$state/host"; } 2>/dev/null
# The snippet's environment, one entry a line (the server sends none with a
# newline), for `after_reset`.
: >"$state/env"
while [ "$n" -gt 0 ]; do
  printf '%s\n' "$1" >>"$state/env"
  shift
  n=$((n - 1))
done

# Sets st, uids, gids (" real effective saved fs ") and, with $2 set, pnd
# (the shared pending signals) from /proc/$1/status; fails when the process
# is gone. Builtins only.
inspect() {
  st= uids= gids= pnd=
  { while read -r k a b c d; do
      case $k in
        State:) st=$a ;;
        Uid:) uids=" $a $b $c $d " ;;
        Gid:) gids=" $a $b $c $d "; [ -z "${2:-}" ] && return 0 ;;
        ShdPnd:) pnd=$a; return 0 ;;
      esac
    done <"/proc/$1/status"; } 2>/dev/null
  [ -n "$gids" ]
}

# The idle process: at the first start, the only child of the container's
# init (every exec has parent 0 in the container), looked for again until the
# init has started it (the warden may be the container's first exec);
# remembered after that. None found: "ok PID 0", which the server refuses.
find_idle() {
  tries=0
  while [ -z "$idle" ] && [ "$tries" -lt 20000 ]; do
    for p in /proc/[0-9]*; do
      ppid=
      { while read -r k v _; do
          [ "$k" = PPid: ] && { ppid=$v; break; }
        done <"$p/status"; } 2>/dev/null
      [ "$ppid" = 1 ] && { idle=${p#/proc/}; break; }
    done
    tries=$((tries + 1))
  done
  [ -z "$idle" ] || echo "$idle" >"$state/idle"
}
[ -n "$idle" ] || find_idle

# Whether $1 is the runner host: the pid `spare` named, still a process of
# root's alone (were the host gone and its pid taken by a lease's process,
# that one would have the sandbox user among its ids). Builtins only.
is_host() {
  [ -n "$host" ] && [ "$1" = "$host" ] && inspect "$1" && [ "$uids" = " 0 0 0 0 " ]
}

# Whether the process just inspected is one that `sweep` is after ($mode,
# $id).
wanted() {
  case $mode in
    all) return 0 ;;
    gid) case $gids in *" $id "*) return 0 ;; esac ;;
    uid) case $uids in *" $id "*) return 0 ;; esac ;;
  esac
  return 1
}

# Kills every process that `wanted` selects; never init, the idle process,
# the runner host or the warden. Everything else in the container is frozen first: one
# kill(-1), which no process escapes by forking, so a fork bomb neither forks
# on nor competes with the warden for the CPU. Every selected process is
# then killed; a second pass catches one that an engine exec started
# meanwhile (no selected process can fork any more). Then the others are let
# go again, except those that were stopped already (a stop signal still
# pending on a stopped process: a run may stop its own processes). Never
# waits for the killed to exit, never loops: the warden runs at a high
# priority, and spinning would starve their exits. Sets $killed.
sweep() {
  mode=$1 id=$2 killed=0 thaw=
  kill -STOP -1 2>/dev/null
  for pass in 1 2; do
    for p in /proc/[0-9]*; do
      pid=${p#/proc/}
      case $pid in 1 | "$self") continue ;; esac
      if [ "$pid" != "$idle" ] && ! is_host "$pid" && inspect "$pid" && wanted; then
        [ "$st" = Z ] && continue
        kill -KILL "$pid" 2>/dev/null && [ "$pass" = 1 ] && killed=$((killed + 1))
      elif [ "$pass" = 1 ] && inspect "$pid" pending && [ "$st" != Z ]; then
        [ "$st" = T ] && stop_pending && continue
        thaw="$thaw $pid"
      fi
    done
  done
  for pid in $thaw; do kill -CONT "$pid" 2>/dev/null; done
}

# Sends signal $2 to every process with gid $1 among its ids (a client's
# signal to its interactive run), without freezing anything: the run goes
# on. Sets $sent.
signal_group() {
  mode=gid id=$1 sent=0
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    case $pid in 1 | "$self" | "$idle") continue ;; esac
    if inspect "$pid" && wanted && [ "$st" != Z ] && kill -"$2" "$pid" 2>/dev/null; then
      sent=$((sent + 1))
    fi
  done
}

# Whether $pnd (hex) has SIGSTOP, signal 19 (bit 0x40000). gVisor's status
# has no ShdPnd: then no. Never an arithmetic error, which ends a shell.
stop_pending() {
  low=${pnd#????????}
  [ -n "$low" ] || low=$pnd
  case $low in '' | *[!0-9a-fA-F]*) return 1 ;; esac
  [ $((0x$low & 0x40000)) != 0 ]
}

# How many processes other than init, the idle one, the runner host and the
# warden exist (zombies too: they hold pids until reaped), in $busy.
count_others() {
  busy=0
  for p in /proc/[0-9]*; do
    case ${p#/proc/} in
      1 | "$self" | "$idle") ;;
      *) is_host "${p#/proc/}" || busy=$((busy + 1)) ;;
    esac
  done
}

number() {
  case $1 in '' | *[!0-9]*) return 1 ;; esac
}

# Whether SysV IPC objects exist (builtins: no fork when there are none;
# gVisor has no /proc/sysvipc: then maybe).
ipc_left() {
  for f in /proc/sysvipc/shm /proc/sysvipc/sem /proc/sysvipc/msg; do
    [ -r "$f" ] || return 0
    n=0
    { while read -r _; do
        n=$((n + 1))
        [ "$n" -gt 1 ] && return 0
      done <"$f"; } 2>/dev/null
  done
  return 1
}

# Returns the container to the state the pool made it in: every process
# but init, the idle process, the runner host and the warden killed (any
# uid); SysV IPC
# objects removed by the uids that could have made them (root would need
# CAP_SYS_ADMIN); POSIX message queues removed; every place the sandbox
# user can write emptied (never following a symlink, never leaving its file
# system) but for the output directory and the directories on its way; each
# given back its owner and mode if a run changed them; the output directory
# made again. A handful of forks at most, one `find` for each job.
reset() {
  sweep all 0
  # The killed exit in their own time: until they are gone (and their pids
  # free for what follows), the server asks again a moment later.
  count_others
  [ "$busy" = 0 ] || { echo "busy $busy"; return 0; }
  if ipc_left; then
    for u in "$uid" $(/bin/cat "$state/installers" 2>/dev/null); do
      number "$u" || continue
      /usr/bin/setpriv --reuid="$u" --regid="$u" --clear-groups --inh-caps=-all \
        /usr/bin/ipcrm --all >/dev/null 2>&1
    done
  fi
  for q in /dev/mqueue/*; do
    [ -e "$q" ] && /usr/bin/find /dev/mqueue -mindepth 1 -delete 2>/dev/null
    break
  done
  [ -s "$state/writable" ] || { echo "err nothing discovered yet"; return 1; }
  set --
  while read -r _ _ _ dir; do set -- "$@" "$dir"; done <"$state/writable"
  set -- "$@" -xdev -mindepth 1 ! '(' -type d '(' -path "$out"
  a=$out
  while a=${a%/*}; [ -n "$a" ]; do set -- "$@" -o -path "$a"; done
  set -- "$@" ')' ')'
  if ! /usr/bin/find "$@" -delete 2>/dev/null; then
    left=$(/usr/bin/find "$@" -print -quit 2>/dev/null)
    [ -z "$left" ] || { echo "err could not empty the writable places: $left is left"; return 1; }
  fi
  set --
  while read -r _ _ _ dir; do set -- "$@" "$dir"; done <"$state/writable"
  set -- "$@" -maxdepth 0 '('
  or=
  while read -r mode owner group dir; do
    # shellcheck disable=SC2086 # $or is "-o" after the first
    set -- "$@" $or -path "$dir" '(' ! -uid "$owner" -o ! -gid "$group" -o ! -perm "$mode" ')' \
      -exec /bin/chown "$owner:$group" '{}' ';' -exec /bin/chmod "$mode" '{}' ';'
    or=-o
  done <"$state/writable"
  set -- "$@" ')'
  /usr/bin/find "$@" 2>/dev/null
  if [ ! -d "$out" ]; then
    /bin/mkdir -p "$out" && /bin/chown "$uid:$gid" "$out" ||
      { echo "err could not make $out"; return 1; }
  fi
  after_reset || { echo "err the after-reset snippet failed"; return 1; }
  echo ok
}

# The language's after-reset snippet, as the sandbox user (no capability,
# no supplementary group, the ordinary priority), with the image's
# environment: what a fresh container has, restored (a font cache...).
after_reset() {
  [ -n "$snippet" ] || return 0
  (
    set --
    while IFS= read -r kv; do set -- "$@" "$kv"; done <"$state/env"
    exec /usr/bin/nice -n 20 /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups \
      --inh-caps=-all /usr/bin/env -i "$@" /bin/sh -c "$snippet"
  ) </dev/null >/dev/null 2>&1
}

# Records every directory the sandbox user can write, with its owner and
# mode as they are now: the given ones (the pool's own mounts), and every
# other one found, as the sandbox user, on a file system mounted writable
# (with a read-only root, the engine's tmpfs mounts: Podman adds /var/tmp and
# /run; with a writable root, the whole root file system too). Writable files
# outside those directories, which no reset can restore, are counted.
discover() {
  : >"$state/writable.new" || { echo "err cannot write $state"; return 1; }
  : >"$state/unrestorable"
  given=" $* "
  # find, not stat: gVisor's older kernels refuse statx, which stat uses.
  for dir in "$@"; do
    [ -d "$dir" ] && /usr/bin/find "$dir" -maxdepth 0 -printf '%m %U %G %p\n' >>"$state/writable.new"
  done
  set -f
  set --
  if [ -r /proc/self/mountinfo ]; then
    while read -r _ _ _ _ mp opts _; do
      case $opts in rw | rw,*) ;; *) continue ;; esac
      case $mp in
        /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /opt/sandpool | /opt/sandpool/*) continue ;;
        *\\*) echo "$mp" >>"$state/unrestorable"; continue ;;
      esac
      set -- "$@" "$mp"
    done </proc/self/mountinfo
  fi
  set +f
  if [ $# -gt 0 ]; then
    /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all \
      /usr/bin/find "$@" -xdev '(' -type d -writable -printf 'd %m %U %G %p\n' -prune ')' \
      -o '(' ! -type d ! -type l -writable -printf 'f %p\n' ')' 2>/dev/null |
      while read -r kind rest; do
        case $kind in
          d)
            case $given in *" ${rest#* * * } "*) continue ;; esac
            echo "$rest" >>"$state/writable.new"
            ;;
          f) echo "$rest" >>"$state/unrestorable" ;;
        esac
      done
  fi
  /bin/mv "$state/writable.new" "$state/writable"
  dirs=0 files=0
  while read -r _; do dirs=$((dirs + 1)); done <"$state/writable"
  while read -r _; do files=$((files + 1)); done <"$state/unrestorable"
  echo "ok $dirs $files"
}

dispatch() {
  case $1 in
    ping) echo "ok $self ${idle:-0}" ;;
    kill)
      case $2 in gid | uid) ;; *) echo "err kill gid|uid N"; return ;; esac
      number "$3" || { echo "err not a number: $3"; return; }
      sweep "$2" "$3"
      echo "ok $killed"
      ;;
    signal)
      number "$2" || { echo "err not a number: $2"; return; }
      if ! number "$3" || [ "$3" -lt 1 ] || [ "$3" -gt 64 ]; then
        echo "err not a signal number: $3"; return
      fi
      signal_group "$2" "$3"
      echo "ok $sent"
      ;;
    reset) reset ;;
    discover) shift; discover "$@" ;;
    install-begin)
      number "$2" || { echo "err not a number: $2"; return; }
      echo "$2" >>"$state/installers"
      /bin/mkdir -p "$libs" "$install_home" && /bin/chown -R "$2:$2" "$libs" "$install_home" &&
        echo ok || echo "err could not prepare $libs"
      ;;
    install-end)
      number "$2" || { echo "err not a number: $2"; return; }
      sweep uid "$2"
      count_others
      [ "$busy" = 0 ] || { echo "busy $busy"; return; }
      /bin/rm -rf "$install_home"
      /bin/chown -R 0:0 "$libs" && /bin/chmod -R go-w,ug-s "$libs" &&
        echo ok || echo "err could not seal $libs"
      ;;
    spare)
      number "$2" || { echo "err not a number: $2"; return; }
      host=$2
      echo "$host" >"$state/host"
      echo ok
      ;;
    *) echo "err unknown command $1" ;;
  esac
}

if [ $# -gt 0 ]; then
  dispatch "$@"
  exit 0
fi
echo "ok $self ${idle:-0}"
while read -r line; do
  set -f
  # shellcheck disable=SC2086 # the server's words, split on spaces
  set -- $line
  set +f
  [ $# -gt 0 ] && dispatch "$@"
done
