# Shared by cluster.sh and node.sh (sourced): processes started in their own
# session with pid files in $DIR/pids, waits, free ports and certificates.
# The sourcing script sets HERE, DIR, BIN (where `start` finds binaries) and
# log()/die().

STARTED=()
bin_dir() { "$HERE/tools.sh" --print-bin-dir; }

# ---- processes --------------------------------------------------------------------
# A pid file is trusted only while /proc/PID/exe is still the binary we started,
# so a stale file never makes us signal somebody else's process.
ours() { # NAME -> pid on stdout if it is alive and ours
  local f="$DIR/pids/$1.pid" pid exe
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ $exe == "$(<"$DIR/pids/$1.exe")" ]] || return 1
  echo "$pid"
}

start() { # NAME ARGS...   (binary = $BIN/NAME) in its own session, logs in $DIR/logs
  local name=$1; shift
  start_exe "$name" "$BIN/$name" "$@"
}

start_exe() { # NAME EXE ARGS...   as start, for a binary from elsewhere (containerd)
  local name=$1 exe=$2; shift 2
  readlink -f "$exe" >"$DIR/pids/$name.exe"
  setsid "$exe" "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
  STARTED+=("$name")
  # wait (max 10 s) until setsid has exec'd the binary, so `ours` (and so
  # `down`) recognises the process from here on
  local i
  for ((i = 0; i < 500; i++)); do
    ours "$name" >/dev/null || exited "$name" && break
    sleep 0.02
  done
}

gone() { # PID: exited (a zombie waiting to be reaped counts as exited)
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [[ -z $st || $st == Z ]]
}

exited() { # NAME: the process `start` launched is gone (pid file = our own child's pid)
  local pid
  pid=$(<"$DIR/pids/$1.pid") || return 0
  gone "$pid"
}

stop() { # GRACE_SECONDS NAME...: TERM, wait up to GRACE, then KILL
  local grace=$1; shift
  local name pid i left
  local -A pids=()
  for name in "$@"; do
    if pid=$(ours "$name"); then kill -TERM "$pid" 2>/dev/null || true; pids[$name]=$pid; fi
  done
  for ((i = 0; i < grace * 10; i++)); do
    left=0
    for name in "${!pids[@]}"; do gone "${pids[$name]}" || left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  for name in "${!pids[@]}"; do
    gone "${pids[$name]}" && continue
    log "$name (${pids[$name]}) still running ${grace}s after TERM: KILL"
    kill -KILL "${pids[$name]}" 2>/dev/null || true
  done
}


wait_until() { # SECONDS DESCRIPTION CMD...  (gives up early if a component died)
  local limit=$1 what=$2; shift 2
  local t0=$SECONDS n
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t0 < limit)) || { log "timed out after ${limit}s waiting for $what"; return 1; }
    for n in "${STARTED[@]}"; do
      exited "$n" && { log "$n exited while waiting for $what"; return 1; }
    done
    sleep 0.2
  done
  log "$what ($((SECONDS - t0))s)"
}

alive_or_die() { local n; for n in "$@"; do ours "$n" >/dev/null || { tail -n 30 "$DIR/logs/$n.log" >&2 || true; die "$n exited"; }; done; }

# ---- ports ----------------------------------------------------------------------------
declare -A TAKEN=()
free_port() { # VAR: set VAR to a TCP port nobody listens on (nor picked before)
  local p used
  used=$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    [[ -z ${TAKEN[$p]:-} ]] || continue
    grep -qx "$p" <<<"$used" && continue
    TAKEN[$p]=1
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found"
}

# ---- certificates -------------------------------------------------------------------
# issue_cert NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt in $DIR/pki, signed
# by the cluster's CA (pki/ca.*), valid 2 days.
issue_cert() {
  local p="$DIR/pki"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$p/$1.key" -out "$p/$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" >"$p/$1.ext"
  openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 2 -out "$p/$1.crt" -extfile "$p/$1.ext" 2>/dev/null
  rm -f "$p/$1.csr" "$p/$1.ext"
}
CLIENT_CERT_EXT="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

# kubeconfig NAME: $DIR/NAME.kubeconfig for the API server on $API_PORT, with
# the client certificate pki/NAME.*
kubeconfig() { # NAME (cert in pki/NAME.*)
  local kc="$DIR/$1.kubeconfig"
  KUBECONFIG=$kc "$BIN/kubectl" config set-cluster coded-e2e --server="https://127.0.0.1:$API_PORT" \
    --certificate-authority="$DIR/pki/ca.crt" --embed-certs=true >/dev/null
  KUBECONFIG=$kc "$BIN/kubectl" config set-credentials "$1" \
    --client-certificate="$DIR/pki/$1.crt" --client-key="$DIR/pki/$1.key" --embed-certs=true >/dev/null
  KUBECONFIG=$kc "$BIN/kubectl" config set-context coded-e2e --cluster=coded-e2e --user="$1" >/dev/null
  KUBECONFIG=$kc "$BIN/kubectl" config use-context coded-e2e >/dev/null
}

# up_exit RC, the EXIT trap of `up`: on failure, the last lines of every
# $COMPONENTS log, then $UP_TEARDOWN unless CODED_E2E_KEEP_ON_FAILURE=1.
up_exit() {
  local rc=$1
  trap - EXIT
  ((rc != 0)) || return 0
  log "up failed (exit $rc); last log lines:"
  local n
  for n in "${COMPONENTS[@]}"; do
    [[ -f $DIR/logs/$n.log ]] && { echo "--- $n" >&2; tail -n 20 "$DIR/logs/$n.log" >&2; }
  done
  if [[ ${CODED_E2E_KEEP_ON_FAILURE:-0} == 1 ]]; then
    log "left running for debugging ($DIR); '$0 down' cleans up"
  else
    "$UP_TEARDOWN"
  fi
  exit "$rc"
}
