#!/usr/bin/env bash
# Install gpuacct's control host: Debian's Prometheus, Alertmanager and InfluxDB, gpuacct in a
# virtualenv under /opt/gpuacct (from a wheelhouse, which the nodes install from too), the
# deployment's CA, secrets and configs in /etc/gpuacct (`gpuacct-admin init`), the system user
# gpuacct, the units of gpuacct-billing, gpuacct-enforcer, gpuacct-web and the daily backup,
# and drop-ins that point Debian's servers at gpuacct's configs.
#
#   deploy/install-control.sh --host control.lab.example.org [--host 10.0.0.1]
#
# Options:
#   --host NAME        a name or address nodes and users reach this host by (repeat; the first
#                      is the web page's)
#   --wheelhouse DIR   install from these wheels only, with no package index (make them on a
#                      machine with one: `gpuacct-admin wheelhouse CHECKOUT --into DIR`);
#                      without it, the wheelhouse is built from the checkout this script is in
#   --no-start         write everything, start nothing
# Run it again to upgrade: gpuacct is reinstalled, the rules and units replaced; no secret, no
# CA, no config an operator may have edited changes.
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)
hosts=() wheelhouse="" start=1
while [ $# -gt 0 ]; do
    case $1 in
        --host|--wheelhouse)
            [ $# -gt 1 ] || { echo "install-control.sh: $1 needs a value" >&2; exit 2; } ;;&
        --host) hosts+=(--host "$2"); shift 2 ;;
        --wheelhouse) wheelhouse=$(realpath -m "$2"); shift 2 ;;
        --no-start) start=0; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "install-control.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install-control.sh: run as root" >&2; exit 2; }
[ ${#hosts[@]} -gt 0 ] || {
    echo "install-control.sh: name this host as nodes and users reach it: --host NAME" >&2
    exit 2
}
if [ -n "$wheelhouse" ] && ! ls "$wheelhouse"/gpuacct-*.whl >/dev/null 2>&1; then
    echo "install-control.sh: no gpuacct wheel in $wheelhouse" >&2; exit 2
fi

packages=(prometheus prometheus-alertmanager influxdb python3-venv)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! getent passwd gpuacct >/dev/null; then
    echo "==> the system user gpuacct"
    useradd --system --user-group --home-dir /var/lib/gpuacct --no-create-home \
        --shell /usr/sbin/nologin gpuacct
fi

opt=/opt/gpuacct
echo "==> gpuacct in $opt"
python3 -m venv "$opt"
if [ -z "$wheelhouse" ]; then  # gpuacct and its dependencies at the checkout's versions
    here=$(cd "$self/.." && pwd)
    "$opt/bin/pip" install --quiet --disable-pip-version-check -c "$here/constraints.txt" \
        --upgrade "$here"
    "$opt/bin/gpuacct-admin" wheelhouse "$here" --into "$opt/wheelhouse"
else  # the nodes install from the same wheels
    "$opt/bin/pip" install --quiet --disable-pip-version-check --no-index \
        --find-links "$wheelhouse" --upgrade gpuacct
    if [ "$wheelhouse" != "$opt/wheelhouse" ]; then
        rm -rf "$opt/wheelhouse" && mkdir -p "$opt/wheelhouse"
        cp "$wheelhouse"/*.whl "$opt/wheelhouse/"
    fi
fi
for command in gpuacct-admin gpuacct-billing gpuacct-enforcer; do
    ln -sfn "$opt/bin/$command" "/usr/local/sbin/$command"
done

echo "==> /etc/gpuacct"
"$opt/bin/gpuacct-admin" init "${hosts[@]}"

echo "==> units and drop-ins in /etc/systemd/system"
units=$("$opt/bin/python" -c 'import deploy, pathlib; print(pathlib.Path(deploy.__file__).parent / "systemd")')
for unit in gpuacct-billing.service gpuacct-enforcer.service gpuacct-web.service \
            gpuacct-backup.service gpuacct-backup.timer; do
    install -m 0644 "$units/$unit" "/etc/systemd/system/$unit"
done
for server in prometheus prometheus-alertmanager influxdb; do
    mkdir -p "/etc/systemd/system/$server.service.d"
    install -m 0644 "$units/$server.service.d/gpuacct.conf" \
        "/etc/systemd/system/$server.service.d/gpuacct.conf"
done
if [ -d /etc/grafana/provisioning ]; then  # an existing Grafana on this host
    for kind in datasources dashboards; do
        install -m 0644 "/etc/gpuacct/grafana/provisioning/$kind/gpuacct.yml" \
            "/etc/grafana/provisioning/$kind/gpuacct.yml"
    done
    echo "==> Grafana provisioning in /etc/grafana/provisioning (restart grafana-server)"
fi

services=(influxdb prometheus prometheus-alertmanager gpuacct-billing gpuacct-enforcer
          gpuacct-web)
if [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --quiet "${services[@]}" gpuacct-backup.timer
    systemctl restart "${services[@]}"
    systemctl start gpuacct-backup.timer
    systemctl --no-pager --lines=0 status "${services[@]}" | grep -E '^●|Active:' || true
elif [ "$start" = 1 ]; then
    echo "systemd is not running here: start ${services[*]} as their units say"
fi
echo "==> done. The web page: $(awk '/public_url/ {print $2}' /etc/gpuacct/gpuacct.yaml)"
echo "    its administrator's password: /etc/gpuacct/secrets/admin-password"
echo "    enrol each GPU node: gpuacct-admin node add NAME ADDRESS"
