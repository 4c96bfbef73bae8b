# Sourced by scripts/test and bench/run: installs and starts the test broker (Tansu, a Kafka-protocol broker
# with sqlite storage; see DESIGN.md and /work/shared/reference/broker.md for why this one).
#   ensure_tansu            install Tansu $TANSU_VERSION with `cargo install` when missing (~12 minutes once)
#   start_broker            start it on a free port in a fresh directory; sets BROKER_PID, BROKER_DIR,
#                           BROKER_PORT and BROKERS (host:port); `stop_broker` (also on EXIT) removes it
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
export PATH="$HOME/.cargo/bin:$PATH"

ensure_tansu() {
  if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "== [$(date -u +%H:%M:%S)] installing Tansu $TANSU_VERSION with sqlite storage (first time on this machine: ~12 minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features --features libsql
  fi
}

start_broker() {
  BROKER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/aifinops-tansu.XXXXXX")"
  BROKER_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  # the sqlite path is relative to the broker's working directory (an absolute one is mangled)
  (cd "$BROKER_DIR" && exec tansu broker --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" --storage-engine sqlite://tansu.db \
      >"$BROKER_DIR/broker.log" 2>&1) &
  BROKER_PID=$!
  trap stop_broker EXIT
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$BROKER_PORT)))"; then break; fi
    sleep 0.1
  done
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "Tansu did not start:"; cat "$BROKER_DIR/broker.log"; return 1
  fi
  BROKERS="127.0.0.1:$BROKER_PORT"
}

stop_broker() {
  if [ -n "${BROKER_PID:-}" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  [ -n "${BROKER_DIR:-}" ] && rm -rf "$BROKER_DIR"
  BROKER_PID=""
}
