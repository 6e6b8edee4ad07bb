#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis servers for the ecosystem tests (tests/ecosystem).
#
# Usage: scripts/services.sh start|stop|status
#
#   start   installs Debian's `postgresql` and `redis-server` packages if they are missing
#           (apt-get, as root or through sudo; `apt-get update` only if the install needs it),
#           then starts, unless already running:
#             - PostgreSQL on 127.0.0.1:54329 only, trust authentication, a fresh data
#               directory in .services/postgres and its Unix socket in .services/pg-socket;
#               it runs as the `postgres` system user when we are root (it refuses root);
#             - redis-server on 127.0.0.1:63799 only, no persistence, daemonized with its
#               pidfile and log in .services.
#           It waits until both answer (pg_isready, redis-cli ping) and exits non-zero with a
#           message naming the service that could not start.
#   stop    stops both servers and deletes their data directories.
#   status  says whether each server runs; exits 0 only if both do.
#
# The tests find the servers at the same addresses (tests/ecosystem/services.py), which the
# environment variables OXLOOP_TEST_PG_DSN and OXLOOP_TEST_REDIS_URL can override.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="$ROOT/.services"
PG_PORT=54329
REDIS_PORT=63799
HOST=127.0.0.1
WAIT_SECONDS=30

PG_DATA="$SERVICES_DIR/postgres"
PG_SOCKET_DIR="$SERVICES_DIR/pg-socket"
PG_LOG="$SERVICES_DIR/postgres.log"
REDIS_DIR="$SERVICES_DIR/redis"
REDIS_PIDFILE="$SERVICES_DIR/redis.pid"
REDIS_LOG="$SERVICES_DIR/redis.log"

log() { echo "services.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command as root: directly if we are root, else through sudo (if there is one).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "not root and no sudo: cannot run '$*' (install the packages postgresql and redis-server yourself)"
    fi
}

# Runs a PostgreSQL command as the server's user: `postgres` when we are root, else ourselves.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The directory of PostgreSQL's server binaries (initdb, pg_ctl, postgres): Debian puts them
# in /usr/lib/postgresql/<version>/bin, out of PATH (the newest version is chosen).
pg_bindir() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
        return
    fi
    # Elsewhere, whatever PATH has (resolving symlinks, so pg_ctl and postgres sit together).
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    return 1
}

# Installs the Debian packages whose programs are missing.
install_packages() {
    local packages=()
    pg_bindir >/dev/null || packages+=(postgresql)
    { command -v redis-server && command -v redis-cli; } >/dev/null || packages+=(redis-server)
    [ ${#packages[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "missing ${packages[*]} and no apt-get to install them"
    log "installing ${packages[*]}"
    # The packages' maintainer scripts must not start system-wide servers (on ports 5432 and
    # 6379) besides ours: while installing, a policy-rc.d forbids starting services (unless
    # the system already has one, as Docker images do).
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    local status=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends "${packages[@]}" \
        || { log "install failed: updating the package lists and retrying"
             as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive \
                 apt-get install -q -y --no-install-recommends "${packages[@]}"; } \
        || status=$?
    [ -n "$added_policy" ] && as_root rm -f "$policy"
    [ "$status" -eq 0 ] || die "could not install ${packages[*]}"
}

# Whether something accepts TCP connections on 127.0.0.1:<port>.
port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pg_running() {
    local bindir
    bindir="$(pg_bindir)" || return 1
    [ -f "$PG_DATA/PG_VERSION" ] && as_pg "$bindir/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

redis_running() {
    [ -f "$REDIS_PIDFILE" ] && kill -0 "$(cat "$REDIS_PIDFILE")" 2>/dev/null
}

start_postgres() {
    local bindir
    bindir="$(pg_bindir)" || die "PostgreSQL's initdb and pg_ctl not found"
    if pg_running; then
        log "PostgreSQL already running on $HOST:$PG_PORT"
        return
    fi
    port_open "$PG_PORT" && die "PostgreSQL cannot start: something else listens on $HOST:$PG_PORT"
    rm -rf "$PG_DATA" "$PG_SOCKET_DIR"
    mkdir -p "$PG_DATA" "$PG_SOCKET_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$PG_DATA" "$PG_SOCKET_DIR"
        # The server's user must be able to reach its directories.
        runuser -u postgres -- test -w "$PG_DATA" \
            || die "PostgreSQL cannot start: user postgres cannot write to $PG_DATA (check the permissions of its parents)"
    fi
    chmod 700 "$PG_DATA"
    as_pg "$bindir/initdb" --pgdata="$PG_DATA" --username=postgres --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >"$SERVICES_DIR/initdb.log" 2>&1 \
        || { cat "$SERVICES_DIR/initdb.log" >&2; die "PostgreSQL cannot start: initdb failed"; }
    # Loopback only: no other address, trust on the Unix socket and 127.0.0.1 and nothing else.
    cat >"$PG_DATA/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
    # A test server: durability is not wanted, speed is.
    cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$PG_DATA/pg_hba.conf" "$PG_DATA/postgresql.conf"
        touch "$PG_LOG" && chown postgres: "$PG_LOG"
    fi
    as_pg "$bindir/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$WAIT_SECONDS" >/dev/null \
        || { tail -n 20 "$PG_LOG" >&2; die "PostgreSQL did not start (log: $PG_LOG)"; }
    local pg_isready="$bindir/pg_isready" deadline=$((SECONDS + WAIT_SECONDS))
    until "$pg_isready" -q -h "$HOST" -p "$PG_PORT" -U postgres -d postgres; do
        [ "$SECONDS" -lt "$deadline" ] || die "PostgreSQL does not answer on $HOST:$PG_PORT (log: $PG_LOG)"
        sleep 0.2
    done
    log "PostgreSQL running on $HOST:$PG_PORT (data in $PG_DATA)"
}

start_redis() {
    if redis_running; then
        log "redis-server already running on $HOST:$REDIS_PORT"
        return
    fi
    port_open "$REDIS_PORT" && die "redis-server cannot start: something else listens on $HOST:$REDIS_PORT"
    rm -rf "$REDIS_DIR" "$REDIS_PIDFILE"
    mkdir -p "$REDIS_DIR"
    # Loopback TCP only (no Unix socket), no RDB snapshots, no AOF.
    redis-server --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
        --save "" --appendonly no --dir "$REDIS_DIR" \
        --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
        || die "redis-server did not start (log: $REDIS_LOG)"
    local deadline=$((SECONDS + WAIT_SECONDS))
    until [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "redis-server does not answer on $HOST:$REDIS_PORT (log: $REDIS_LOG)"
        sleep 0.2
    done
    log "redis-server running on $HOST:$REDIS_PORT"
}

stop_postgres() {
    local bindir
    if pg_running; then
        bindir="$(pg_bindir)"
        as_pg "$bindir/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$WAIT_SECONDS" >/dev/null \
            || die "PostgreSQL did not stop (data in $PG_DATA)"
        log "PostgreSQL stopped"
    fi
    rm -rf "$PG_DATA" "$PG_SOCKET_DIR" "$PG_LOG" "$SERVICES_DIR/initdb.log"
}

stop_redis() {
    if redis_running; then
        local pid deadline=$((SECONDS + WAIT_SECONDS))
        pid="$(cat "$REDIS_PIDFILE")"
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || die "redis-server (pid $pid) did not stop"
            sleep 0.1
        done
        log "redis-server stopped"
    fi
    rm -rf "$REDIS_DIR" "$REDIS_PIDFILE" "$REDIS_LOG"
}

case "${1:-}" in
    start)
        install_packages
        mkdir -p "$SERVICES_DIR"
        # Each is attempted even if the other fails; the exit status says if one did.
        status=0
        (start_postgres) || status=1
        (start_redis) || status=1
        exit "$status"
        ;;
    stop)
        # Both are attempted even if the first fails.
        status=0
        (stop_postgres) || status=1
        (stop_redis) || status=1
        rmdir "$SERVICES_DIR" 2>/dev/null || true
        exit "$status"
        ;;
    status)
        status=0
        if pg_running; then echo "PostgreSQL: running on $HOST:$PG_PORT"; else echo "PostgreSQL: stopped"; status=3; fi
        if redis_running; then echo "redis-server: running on $HOST:$REDIS_PORT"; else echo "redis-server: stopped"; status=3; fi
        exit "$status"
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
