#!/usr/bin/env bash
# Install gpuacct on a GPU node: a virtualenv under /opt/gpuacct, /etc/gpuacct/gpuacct.yaml,
# the systemd unit for gpuacct-exporter, gpuacct and gpuacct-balance on users' PATH and the
# login greeting.
#
#   deploy/install-node.sh --enforcer-url http://control:9837 --key-file node-key
#   /root/gpuacct-enrol/install-node.sh --bundle /root/gpuacct-enrol
#
# Options:
#   --bundle DIR        what `gpuacct-admin node add` made for this node on the control host:
#                       its key, CA and certificate, the enforcer's URL, and the wheelhouse it
#                       installs from with no package index (this script is in it too)
#   --wheelhouse DIR    install gpuacct and its dependencies from these wheels only
#   --enforcer-url URL  where the node pulls its enforcement policy (gpuacct-enforcer)
#   --key-file FILE     this node's key (auth.node_key; on the control host:
#                       `gpuacct-enforcer node-key NODE` prints it), copied to /etc/gpuacct/node-key
#   --prometheus-url U  for gpuacct-balance (default http://127.0.0.1:19090)
#   --ca-file FILE      the CA the enforcer's certificate is verified against (an https://
#                       --enforcer-url with a private CA; compose: secrets/tls/ca.crt)
#   --tls-cert FILE --tls-key FILE   serve /metrics and the policy endpoint over TLS with this
#                       certificate (--web.config.file /etc/gpuacct/web.yml); Prometheus then
#                       scrapes the node with scheme https
#   --dry-run-enforcement  only log and report what enforcement would do
#   --root DIR          install below DIR instead of / (packaging, tests); implies --no-start
#   --no-start          do not enable and start the service
# Run it again to upgrade: the virtualenv is updated, an existing config is kept.
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)
root="" enforcer="" key="" prometheus="http://127.0.0.1:19090" start=1 dry_run=false
ca="" cert="" cert_key="" wheelhouse=""
while [ $# -gt 0 ]; do
    case $1 in
        --bundle)
            bundle=$(realpath "$2"); shift 2
            key=$bundle/node-key ca=$bundle/ca.crt cert=$bundle/node.crt
            cert_key=$bundle/node.key
            enforcer=$(cat "$bundle/enforcer-url")
            [ -d "$bundle/wheelhouse" ] && wheelhouse=$bundle/wheelhouse ;;
        --wheelhouse) wheelhouse=$(realpath "$2"); shift 2 ;;
        --enforcer-url) enforcer=$2; shift 2 ;;
        --key-file) key=$2; shift 2 ;;
        --prometheus-url) prometheus=$2; shift 2 ;;
        --ca-file) ca=$2; shift 2 ;;
        --tls-cert) cert=$2; shift 2 ;;
        --tls-key) cert_key=$2; shift 2 ;;
        --dry-run-enforcement) dry_run=true; shift ;;
        --root) root=$(realpath -m "$2"); start=0; shift 2 ;;
        --no-start) start=0; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "install-node.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install-node.sh: run as root" >&2; exit 2; }
if [ -n "$key" ] && [ ! -r "$key" ]; then
    echo "install-node.sh: cannot read the key file $key" >&2; exit 2
fi
for file in "$ca" "$cert" "$cert_key"; do
    if [ -n "$file" ] && [ ! -r "$file" ]; then
        echo "install-node.sh: cannot read $file" >&2; exit 2
    fi
done
if { [ -n "$cert" ] && [ -z "$cert_key" ]; } || { [ -z "$cert" ] && [ -n "$cert_key" ]; }; then
    echo "install-node.sh: --tls-cert and --tls-key go together" >&2; exit 2
fi

if [ -n "$wheelhouse" ] && ! ls "$wheelhouse"/gpuacct-*.whl >/dev/null 2>&1; then
    echo "install-node.sh: no gpuacct wheel in $wheelhouse" >&2; exit 2
fi

opt=$root/opt/gpuacct etc=$root/etc/gpuacct
echo "==> virtualenv in $opt"
python3 -m venv "$opt"
if [ -n "$wheelhouse" ]; then  # the control host's versions, no package index
    "$opt/bin/pip" install --quiet --disable-pip-version-check --no-index \
        --find-links "$wheelhouse" --upgrade gpuacct
else  # from the checkout this script is in
    here=$(cd "$self/.." && pwd)
    "$opt/bin/pip" install --quiet -c "$here/constraints.txt" --upgrade pip
    "$opt/bin/pip" install --quiet -c "$here/constraints.txt" --upgrade "$here"
fi

mkdir -p "$etc"
if [ -n "$key" ]; then
    install -m 0600 "$key" "$etc/node-key"
fi
if [ -n "$ca" ] || [ -n "$cert" ]; then
    mkdir -p "$etc/tls"
fi
[ -n "$ca" ] && install -m 0644 "$ca" "$etc/tls/ca.crt"
if [ -n "$cert" ]; then
    install -m 0644 "$cert" "$etc/tls/node.crt"
    install -m 0600 "$cert_key" "$etc/tls/node.key"
    printf 'tls_server_config:\n  cert_file: /etc/gpuacct/tls/node.crt\n  key_file: /etc/gpuacct/tls/node.key\n' \
        >"$etc/web.yml"
fi
if [ ! -e "$etc/gpuacct.yaml" ]; then
    echo "==> $etc/gpuacct.yaml"
    # World-readable, so users' gpuacct-balance can read it: the secret stays in node-key.
    install -m 0644 /dev/null "$etc/gpuacct.yaml"
    {
        echo "# gpuacct on this node; every key: gpuacct.example.yaml in the repository"
        echo "exporter:"
        echo "  listen_address: \"0.0.0.0:9835\""
        echo "  actuator:"
        echo "    dry_run: $dry_run"
        [ -n "$enforcer" ] && echo "    enforcer_url: \"$enforcer\""
        echo "client:"
        echo "  prometheus_url: \"$prometheus\""
        if [ -n "$key" ] || [ -e "$etc/node-key" ]; then
            echo "auth:"
            echo "  node_key: {file: /etc/gpuacct/node-key}"
        fi
        if [ -n "$ca" ]; then
            echo "tls_client_config:"
            echo "  ca_file: /etc/gpuacct/tls/ca.crt"
        fi
    } >"$etc/gpuacct.yaml"
else
    echo "==> keeping $etc/gpuacct.yaml"
fi
# Validate it (below --root, the key file is looked for where it was installed).
"$opt/bin/python" - "$etc/gpuacct.yaml" "$etc" <<'PY' || exit 2
import pathlib, sys, tempfile, yaml
from gpuacct.config import ConfigError, settings_from_mapping
from gpuacct.listener import WebConfigError, load_web_config
def text(path):
    return open(path, encoding="utf-8").read().replace("/etc/gpuacct/", sys.argv[2] + "/")
try:
    settings_from_mapping(yaml.safe_load(text(sys.argv[1])), sys.argv[1])
except ConfigError as exc:
    sys.exit(f"install-node.sh: config error: {exc}")
web = pathlib.Path(sys.argv[2]) / "web.yml"
if web.exists():
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as copy:
        copy.write(text(web))
        copy.flush()
        try:
            load_web_config(pathlib.Path(copy.name))
        except WebConfigError as exc:
            sys.exit(f"install-node.sh: {web}: {exc}")
PY

echo "==> gpuacct and gpuacct-balance, the login greeting, the systemd unit"
mkdir -p "$root/usr/local/bin" "$root/etc/profile.d" "$root/etc/systemd/system"
ln -sfn /opt/gpuacct/bin/gpuacct-balance "$root/usr/local/bin/gpuacct-balance"
ln -sfn /opt/gpuacct/bin/gpuacct "$root/usr/local/bin/gpuacct"
"$opt/bin/gpuacct-balance" --print-hook >"$root/etc/profile.d/gpuacct.sh"
chmod 0644 "$root/etc/profile.d/gpuacct.sh"
# The PAM session hook (not enabled: add its line to /etc/pam.d/sshd, docs/enforcement.md).
mkdir -p "$root/usr/local/lib/gpuacct"
{ echo "#!/usr/bin/python3 -I"; cat "$("$opt/bin/python" -c \
    'import exporter.users.pam_session as m; print(m.__file__)')"; } \
    >"$root/usr/local/lib/gpuacct/pam-session"
chmod 0755 "$root/usr/local/lib/gpuacct/pam-session"
unit=$self/systemd/gpuacct-exporter.service  # in a checkout; in a bundle, beside this script
[ -e "$unit" ] || unit=$self/gpuacct-exporter.service
install -m 0644 "$unit" "$root/etc/systemd/system/gpuacct-exporter.service"
if [ -e "$etc/web.yml" ]; then  # TLS on the listener: the unit's command with the web config
    mkdir -p "$root/etc/systemd/system/gpuacct-exporter.service.d"
    printf '[Service]\nExecStart=\nExecStart=/opt/gpuacct/bin/gpuacct-exporter --config /etc/gpuacct/gpuacct.yaml run --web.config.file /etc/gpuacct/web.yml\n' \
        >"$root/etc/systemd/system/gpuacct-exporter.service.d/tls.conf"
fi

if [ "$start" = 1 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now gpuacct-exporter.service
        systemctl --no-pager status gpuacct-exporter.service | head -5
    else
        echo "systemd is not running here: start /opt/gpuacct/bin/gpuacct-exporter yourself"
    fi
fi
echo "==> done: metrics on :9835/metrics; users can run gpuacct-balance and gpuacct (reserve, queue, run)"
