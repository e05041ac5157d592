#!/usr/bin/env bash
# Makes the secrets compose.yaml needs, once: random values in ./secrets (a 0700 folder; the
# files are 0644 so the containers' unprivileged users can read the copies mounted into them)
# and Grafana's admin password and the project name in ./.env (0600). Existing values are kept, so it is safe to
# run again. Usage: ./make-secrets.sh [DIR]   (DIR: where compose.yaml is; default: here)
set -euo pipefail
dir=${1:-$(dirname "$0")}
umask 077
mkdir -p "$dir/secrets"
chmod 0700 "$dir/secrets"

# 40 letters and digits: 512 random bytes hold about 124 of them (no pipe is cut short, which
# `set -o pipefail` would take for a failure).
random() { local s; s=$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9'); echo "${s:0:40}"; }

made=()
for name in webhook-token node-master-key influxdb-password influxdb-token web-admin-password \
            web-session-secret; do
    file="$dir/secrets/$name"
    if [ ! -s "$file" ]; then
        random >"$file"
        made+=("$name")
    fi
    chmod 0644 "$file"
done
grep -q '^COMPOSE_PROJECT_NAME=' "$dir/.env" 2>/dev/null || echo "COMPOSE_PROJECT_NAME=gpuacct" >>"$dir/.env"
if ! grep -q '^GRAFANA_ADMIN_PASSWORD=' "$dir/.env" 2>/dev/null; then
    echo "GRAFANA_ADMIN_PASSWORD=$(random)" >>"$dir/.env"
    made+=(grafana-admin-password)
fi
chmod 0600 "$dir/.env"

if [ ${#made[@]} -eq 0 ]; then
    echo "secrets: all present in $dir/secrets and $dir/.env, none changed"
else
    echo "secrets made: ${made[*]}"
fi
echo "web admin password:     $dir/secrets/web-admin-password"
echo "Grafana admin password: GRAFANA_ADMIN_PASSWORD in $dir/.env"
echo "a node's key:           docker compose exec enforcer gpuacct-enforcer --config /etc/gpuacct/enforcer.yaml node-key NODE"
echo "                        (into a file for deploy/install-node.sh --key-file)"
