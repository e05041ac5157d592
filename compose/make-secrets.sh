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

# TLS for gpuacct's listeners (billing, the enforcer, the web): a CA of this deployment and a
# certificate for the services' names, this host's name and GPUACCT_TLS_HOSTS (more names or
# addresses the nodes and users reach the control host by, comma-separated). The CA's key stays
# here, 0600, to sign the nodes' certificates (docs/operators.md).
tls=$dir/secrets/tls
if [ ! -s "$tls/server.crt" ]; then
    mkdir -p "$tls"
    names="DNS:billing,DNS:enforcer,DNS:web,DNS:localhost,IP:127.0.0.1,DNS:$(hostname -f 2>/dev/null || hostname)"
    IFS=, read -ra extra <<<"${GPUACCT_TLS_HOSTS:-}"
    for host in "${extra[@]}"; do
        [ -z "$host" ] && continue
        if [[ $host =~ ^[0-9.]+$|: ]]; then names+=",IP:$host"; else names+=",DNS:$host"; fi
    done
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=gpuacct CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=gpuacct" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 825 -out "$tls/server.crt" \
        -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$names") \
        2>/dev/null
    rm -f "$tls/server.csr" "$tls/ca.srl"
    made+=(tls)
fi
chmod 0700 "$tls"
chmod 0600 "$tls/ca.key"
chmod 0644 "$tls/ca.crt" "$tls/server.crt" "$tls/server.key"  # read inside the containers

if [ ${#made[@]} -eq 0 ]; then
    echo "secrets: all present in $dir/secrets and $dir/.env, none changed"
else
    echo "secrets made: ${made[*]}"
fi
echo "web admin password:     $dir/secrets/web-admin-password"
echo "Grafana admin password: GRAFANA_ADMIN_PASSWORD in $dir/.env"
echo "TLS:                    CA $dir/secrets/tls/ca.crt (give it to the nodes: install-node.sh --ca-file)"
echo "a node's key:           docker compose exec enforcer gpuacct-enforcer --config /etc/gpuacct/enforcer.yaml node-key NODE"
echo "                        (into a file for deploy/install-node.sh --key-file)"
