# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are for the sourcing script
# Helpers shared by the mount benchmarks (bench/mount.sh, bench/many.sh):
# ports, processes, FUSE mounts, a private sshd for sshfs. Sourced after the
# script has defined `log` and `die` and made its temp dir `$TMP`.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port: up to 10 s for something to listen on 127.0.0.1:port
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

alive_of() { # pid... -> the ones still running
  local p
  for p in "$@"; do kill -0 "$p" 2>/dev/null && echo "$p"; done
  return 0
}
stop_pids() { # pid...: TERM all, up to 5 s, then KILL what is left
  local p i left=()
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for i in $(seq 50); do
    mapfile -t left < <(alive_of "$@")
    [ ${#left[@]} -gt 0 ] || break
    sleep 0.1
  done
  [ ${#left[@]} -eq 0 ] || kill -KILL "${left[@]}" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
stop_pid() { [ -n "$1" ] || return 0; stop_pids "$1"; }

unmount() { # dir: fusermount3 -u, retried for 2.5 s, then lazily
  local d=$1 i
  for i in 1 2 3 4 5; do
    mountpoint -q "$d" || return 0
    fusermount3 -u "$d" 2>/dev/null && return 0
    sleep 0.5
  done
  mountpoint -q "$d" && fusermount3 -uz "$d" 2>/dev/null || true
}
# wait_mounted MNT PID LOG NAME: up to 10 s for MNT to be mounted while PID lives
wait_mounted() {
  local i
  for i in $(seq 100); do
    mountpoint -q "$1" && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  cat "$3" >&2
  die "$4 did not mount"
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || DROP_OK=0; }
DROP_OK=1

# start_sshd: an sshd of its own on a free 127.0.0.1 port (ed25519 keys made
# here, internal-sftp, root by key only); sets SSH_PORT, SSHDIR, SSHD_PID and
# SSHFS_OPTS (the -o options for sshfs).
start_sshd() {
  SSH_PORT=$(free_port)
  SSHDIR=$TMP/ssh
  mkdir -p "$SSHDIR"
  chmod 700 "$SSHDIR"
  ssh-keygen -q -t ed25519 -N '' -f "$SSHDIR/host_key" >/dev/null
  ssh-keygen -q -t ed25519 -N '' -f "$SSHDIR/client_key" >/dev/null
  cp "$SSHDIR/client_key.pub" "$SSHDIR/authorized_keys"
  cat >"$SSHDIR/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $SSHDIR/host_key
AuthorizedKeysFile $SSHDIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
PidFile $SSHDIR/sshd.pid
Subsystem sftp internal-sftp
UsePAM no
StrictModes no
CONF
  mkdir -p /run/sshd # privilege-separation dir sshd insists on
  /usr/sbin/sshd -f "$SSHDIR/sshd_config" -D -e 2>"$TMP/sshd.log" &
  SSHD_PID=$!
  wait_port "$SSH_PORT" || { cat "$TMP/sshd.log" >&2; die "sshd did not listen on $SSH_PORT"; }
  SSHFS_OPTS="IdentityFile=$SSHDIR/client_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR"
}
