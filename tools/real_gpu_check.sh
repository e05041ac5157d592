#!/usr/bin/env bash
# Proves the NVML path on a real NVIDIA GPU, through the exporter's device layer (backends: auto):
# a CUDA process of an ordinary user shows up in gpuacct-exporter's /metrics with its user, job,
# GPU memory, the GPU's vendor, model and UUID, and the job's metadata: framework torch (from
# the real libtorch it mapped), its script, and its arguments with the secret redacted.
# Then enforcement on the same GPU: with the user blocked, a new CUDA process started from the
# user's shell fails at start where the node gates GPU device nodes (cgroup v1 devices or a v2
# device program: EPERM on /dev/nvidia0, "no CUDA-capable device"), else it is stopped once NVML
# shows it; with the user to be killed, a running one is stopped (SIGTERM, then SIGKILL).
# Run as root from the repository root on a machine with a GPU, PyTorch and gpuacct's deps.
#   OUT=/tmp/gpu-check PYTHON=python3 tools/real_gpu_check.sh
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}
PORT=${PORT:-9835}
mkdir -p "$OUT"
user=gpuacct-gpucheck
id "$user" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$user"
work=$(mktemp -d)
chmod 755 "$work"

cat >"$work/train.py" <<'EOF'
import sys, time, torch
held = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")  # 2 GiB held for the whole run
a = torch.randn(4096, 4096, device="cuda")
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
EOF
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/gpuacct.yaml" <<YAML
auth: {node_key: "$key"}
exporter:
  interval_seconds: 1
  state_file: $work/state.json
  actuator: {node_name: gpu-check, kill_grace_seconds: 5, cpu_limiter: "off",
             hook_dir: $work/hooks, state_file: $work/actuator.json,
             device_gating: auto, cgroup_group: gpuacct-gpucheck}
YAML

scrape() { "$PY" -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics').read().decode())"; }

"$PY" -m exporter --config "$work/gpuacct.yaml" run --web.listen-address "127.0.0.1:$PORT" \
    >"$OUT/exporter.log" 2>&1 &
exporter=$!
trap 'kill "$exporter" 2>/dev/null || true' EXIT  # also when a step fails
started=$(date +%s.%N)
setpriv --reuid="$user" --regid="$user" --clear-groups \
    env GPUACCT_JOB=gpu-check HOME="$work" "$PY" "$work/train.py" 30 --token s3cret-gpu-check &
train=$!
echo "exporter pid $exporter, CUDA job pid $train (user $user)" | tee "$OUT/pids.txt"
sleep 20  # CUDA is up, torch mapped and seen (maps are looked at 1, 3, 7, 15 s in)
scrape >"$OUT/metrics-during.txt"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv >"$OUT/nvidia-smi.txt" || true
nvidia-smi --query-gpu=index,name,uuid,driver_version,temperature.gpu,power.draw,utilization.gpu \
    --format=csv >>"$OUT/nvidia-smi.txt" || true
wait "$train"
ended=$(date +%s.%N)
sleep 3
scrape >"$OUT/metrics-after.txt"
echo "CUDA job ran $("$PY" -c "print(round($ended - $started, 1))") s from launch (includes CUDA start-up)" \
    | tee -a "$OUT/pids.txt"

# What the exporter saw of the CUDA job, checked (each line PASS or FAIL).
"$PY" - "$OUT/metrics-during.txt" "$user" "$train" <<'EOF' | tee "$OUT/checks.txt"
import sys
from prometheus_client.parser import text_string_to_metric_families
text, user, pid = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
def find(name, **labels):
    return [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
checks = {
    "GPU seconds billed to the user's job": any(
        s.value > 5 for s in find("gpuacct_job_gpu_seconds_total", user=user, job="gpu-check")),
    "the process' GPU memory (>= 2 GiB held)": any(
        s.value >= 2 << 30 for s in find("gpuacct_gpu_process_memory_bytes", pid=pid, user=user)),
    "the GPU's vendor is nvidia": bool(find("gpuacct_gpu_info", vendor="nvidia")),
    "the nvml collector succeeded": any(
        s.value == 1 for s in find("gpuacct_exporter_collector_success", collector="nvml")),
    "framework torch from the mapped libtorch": bool(
        find("gpuacct_job_info", user=user, job="gpu-check", framework="torch")),
    "the secret argument redacted": any(
        "--token <redacted>" in s.labels["args"] for s in find("gpuacct_job_info", user=user))
        and "s3cret-gpu-check" not in text,
}
for what, ok in checks.items():
    print("PASS" if ok else "FAIL", what)
EOF
# One NVML reading cycle, timed (the exporter's GPU side; nvidia-smi is 0.4-0.6 s a call), and
# the same through the device layer the exporter reads it by.
"$PY" - >"$OUT/nvml-timing.txt" <<'EOF'
import statistics, time
from exporter.devices.node import Devices
from exporter.devices.nvml import NvmlBackend, check_distribution
def timed(read):
    times = []
    for _ in range(200):
        t = time.perf_counter(); read(); times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, max(times) * 1000
b = NvmlBackend()
r = b.read()
print("pynvml provider problem:", check_distribution())
print("devices:", [(d.index, d.vendor, d.model, d.uuid, d.temperature_limit_celsius)
                   for d in r.devices])
print("unsupported here:", r.unsupported)
raw = timed(b.read)
layered = timed(Devices([("nvml", b)]).read)
print(f"NVML read: median {raw[0]:.2f} ms, max {raw[1]:.2f} ms")
print(f"through the device layer: median {layered[0]:.2f} ms, max {layered[1]:.2f} ms "
      f"({layered[0] / raw[0]:.2f}x)")
EOF
# Enforcement on the real GPU: push signed policies to the exporter as the enforcer would.
push() {  # push block|kill|none for $user; prints what the node reports back
    "$PY" - "$1" <<PY
import sys, time
from gpuacct.policy import POLICY_PATH, NodePolicy, PushResult, Reason, UserPolicy
from gpuacct.signed_http import exchange
from gpuacct.signing import NodeIdentity
wanted = {
    "block": UserPolicy(block=True, reasons=(Reason(alert="GpuacctBalanceLimited", action="block"),)),
    "kill": UserPolicy(block=True, kill=True,
                       reasons=(Reason(alert="GpuacctBalanceExhausted", action="kill"),)),
}.get(sys.argv[1])
body = NodePolicy(version=time.time_ns() // 1000,
                  users={"$user": wanted} if wanted else {}).model_dump_json().encode()
node = NodeIdentity("gpu-check", ["$key".encode()], 30)  # the enforcer's side of the same key
answer = exchange("http://127.0.0.1:$PORT", "PUT", POLICY_PATH, body, node.sign, node.verify, 5)
for a in PushResult.model_validate_json(answer).actions:
    print(f"  node reports: {a.action} {a.result} {a.detail}")
PY
}
run_job() {  # run a CUDA job as $user from a shell of theirs; say how it ended and when
    local launched code=0
    launched=$(date +%s.%N)
    # The shell waits 3 s first: the node moves it into the user's device group meanwhile,
    # as it would have moved the user's login shell long before.
    setpriv --reuid="$user" --regid="$user" --clear-groups \
        env GPUACCT_JOB="$1" HOME="$work" sh -c "sleep 3; exec $PY $work/train.py 60" \
        >"$OUT/job-$1.log" 2>&1 || code=$?
    echo "  job $1 ended with exit status $code after" \
        "$("$PY" -c "print(round($(date +%s.%N) - $launched, 1))") s (60 s unless stopped)"
}
{
    echo "== block: $user may not start new GPU work"
    push block
    scrape | grep '^gpuacct_gpu_device_gating_info' || true
    run_job blocked-job
    grep -h -m1 -i -E 'cuda-capable|no CUDA|RuntimeError' "$OUT/job-blocked-job.log" || true
    push block  # collects the node's reports
    echo "== kill: $user's running GPU work is stopped"
    push none
    run_job killed-job &
    job=$!
    sleep 15  # CUDA is up and NVML shows the process
    push kill
    wait "$job"
    sleep 2
    push none
} 2>&1 | tee "$OUT/enforcement.txt"

kill "$exporter"; wait "$exporter" || true
for root in /sys/fs/cgroup/devices /sys/fs/cgroup/unified /sys/fs/cgroup; do  # what gating made
    for group in "$root"/gpuacct-gpucheck/user-*; do
        [ -d "$group" ] || continue
        for pid in $(cat "$group/cgroup.procs"); do echo "$pid" >"$root/cgroup.procs" || true; done
        rmdir "$group"
    done
    rmdir "$root/gpuacct-gpucheck" 2>/dev/null || true
done
grep -E '^gpuacct_(job_gpu_seconds_total|gpu_process_memory_bytes|gpu_process_sm|gpu_info|job_info|job_start_time|gpu_memory_used|gpu_temperature|gpu_power|exporter_collector_success)' \
    "$OUT/metrics-during.txt" "$OUT/metrics-after.txt" || true
cat "$OUT/nvidia-smi.txt" "$OUT/nvml-timing.txt" "$OUT/checks.txt"
userdel "$user" || true
