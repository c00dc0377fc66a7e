#!/usr/bin/env bash
# Prepares a machine with no container registry for the stack test:
# a Docker engine, Compose v2, and local stand-ins for the images the
# stack's compose file names, built from Debian packages. Idempotent: what
# is there already is kept.
#
#   sudo tests/stack/setup.sh            # engine, compose, images
#   tests/stack/setup.sh --images-only   # the engine must run already
#   tests/stack/setup.sh --engine-only   # no images
#
# What it makes (the stack test points compose/compose.yaml at them
# through its documented variables):
#   ds-local/debian:bookworm   a bookworm root filesystem (mmdebstrap)
#   ds-local/rust:builder      that plus this machine's Rust toolchain and
#                              CA bundle: builds compose/Dockerfile as is
#   ds-local/postgres:15       Debian's PostgreSQL with the official
#                              image's interface (POSTGRES_USER/PASSWORD/DB,
#                              /var/lib/postgresql/data, pg_isready)
#
# Writes `started-dockerd` into $STATE_DIR (default target/stack) when it
# started the daemon, so the test can stop it afterwards.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
STATE_DIR="${STATE_DIR:-$root/target/stack}"
say() { echo "stack setup: $*" >&2; }
mkdir -p "$STATE_DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_engine() {
  if command -v dockerd >/dev/null; then return; fi
  say "installing Debian's docker.io (the engine) and mmdebstrap"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io mmdebstrap >/dev/null
}

# Compose v2 is packaged in Debian from trixie on: fetch that one package
# through a temporary source of its own, then forget that source again.
install_compose() {
  if docker compose version >/dev/null 2>&1; then return; fi
  say "installing Compose v2 from Debian trixie's docker-compose package"
  local list=/etc/apt/sources.list.d/ds-stack-trixie.list uri work
  # The mirror the machine's own Debian source uses (one-line or deb822).
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | awk '/^URIs:/ {print $2} /^deb / {print ($2 ~ /^\[/) ? $3 : $2}' \
    | grep -E '/debian/?$' | head -n 1 || true)"
  uri="${uri:-http://deb.debian.org/debian}"
  work="$(mktemp -d)"
  as_root sh -c "echo 'deb $uri trixie main' > $list"
  # Whatever happens, the machine's sources end as they were.
  trap 'as_root rm -f '"$list"'; as_root apt-get update -q >/dev/null 2>&1 || true' RETURN
  as_root apt-get update -q -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
    -o APT::Get::List-Cleanup=0 >/dev/null
  (cd "$work" && apt-get download -q -t trixie docker-compose >/dev/null 2>&1)
  dpkg-deb -x "$work"/docker-compose_*.deb "$work/x"
  local plugin
  plugin="$work/x/usr/libexec/docker/cli-plugins/docker-compose"
  [ -x "$plugin" ] || { say "no cli-plugins/docker-compose in the docker-compose package"; exit 1; }
  as_root install -D -m 0755 "$plugin" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$work"
  docker compose version >&2
}

start_engine() {
  if docker info >/dev/null 2>&1; then return; fi
  say "starting dockerd"
  as_root sh -c 'nohup dockerd >/var/log/ds-stack-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { touch "$STATE_DIR/started-dockerd"; return; }
    sleep 0.5
  done
  say "dockerd did not start:"; as_root tail -n 30 /var/log/ds-stack-dockerd.log >&2; exit 1
}

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_images() {
  if ! has_image ds-local/debian:bookworm; then
    say "making ds-local/debian:bookworm with mmdebstrap"
    local tarball="$STATE_DIR/bookworm.tar"
    as_root mmdebstrap --quiet --variant=apt --include=ca-certificates \
      bookworm "$tarball" >/dev/null
    docker import "$tarball" ds-local/debian:bookworm >/dev/null
    as_root rm -f "$tarball"
  fi
  local context
  context="$(mktemp -d)"
  if ! has_image ds-local/rust:builder; then
    say "making ds-local/rust:builder from this machine's toolchain"
    local toolchain
    toolchain="$(rustup toolchain list | awk '/default/ {print $1}')"
    cp -a "$(rustup show home)/toolchains/$toolchain" "$context/rust"
    rm -rf "$context/rust/share/doc"
    # The machine's CA bundle: HTTPS from inside a container (cargo to
    # crates.io) goes out the same way as the machine's own.
    cp /etc/ssl/certs/ca-certificates.crt "$context/ca.crt"
    cat >"$context/Dockerfile" <<'EOF'
FROM ds-local/debian:bookworm
COPY ca.crt /etc/ssl/certs/ca-certificates.crt
RUN apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH CARGO_HOME=/usr/local/cargo \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EOF
    docker build -q -t ds-local/rust:builder "$context" >/dev/null
    rm -rf "$context/rust" "$context/Dockerfile" "$context/ca.crt"
  fi
  if ! has_image ds-local/postgres:15; then
    say "making ds-local/postgres:15 from Debian's postgresql"
    cp "$here/postgres/entrypoint.sh" "$context/entrypoint.sh"
    cat >"$context/Dockerfile" <<'EOF'
FROM ds-local/debian:bookworm
RUN apt-get update -q && apt-get install -y -q --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
EOF
    docker build -q -t ds-local/postgres:15 "$context" >/dev/null
  fi
  rm -rf "$context"
}

if [ "${1:-}" != --images-only ]; then
  install_engine
  install_compose
  start_engine
fi
[ "${1:-}" = --engine-only ] || build_images
say "ready: $(docker version --format 'engine {{.Server.Version}}'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
