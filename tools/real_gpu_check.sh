#!/usr/bin/env bash
# Proves the NVML path on a real NVIDIA GPU: a CUDA process of an ordinary user shows up in
# gpuacct-exporter's /metrics with its user, job, GPU memory, and the GPU's model and UUID.
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
printf 'exporter:\n  interval_seconds: 1\n  state_file: %s/state.json\n' "$work" >"$work/gpuacct.yaml"

scrape() { "$PY" -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics').read().decode())"; }

"$PY" -m exporter --config "$work/gpuacct.yaml" --web.listen-address "127.0.0.1:$PORT" \
    >"$OUT/exporter.log" 2>&1 &
exporter=$!
started=$(date +%s.%N)
setpriv --reuid="$user" --regid="$user" --clear-groups \
    env GPUACCT_JOB=gpu-check HOME="$work" "$PY" "$work/train.py" 30 &
train=$!
echo "exporter pid $exporter, CUDA job pid $train (user $user)" | tee "$OUT/pids.txt"
sleep 15
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

# One NVML reading cycle, timed (the exporter's GPU side; nvidia-smi is 0.4-0.6 s a call).
"$PY" - >"$OUT/nvml-timing.txt" <<'EOF'
import statistics, time
from exporter.nvml import NvmlBackend, check_distribution
b = NvmlBackend()
times = []
for _ in range(50):
    t = time.perf_counter(); r = b.read(); times.append(time.perf_counter() - t)
print("pynvml provider problem:", check_distribution())
print("devices:", [(d.index, d.model, d.uuid) for d in r.devices])
print(f"NVML read: median {statistics.median(times)*1000:.2f} ms, max {max(times)*1000:.2f} ms")
t = time.perf_counter()
import subprocess; subprocess.run(["nvidia-smi"], capture_output=True)
print(f"one nvidia-smi call: {(time.perf_counter()-t)*1000:.0f} ms")
EOF
kill "$exporter"; wait "$exporter" || true
grep -E '^gpuacct_(job_gpu_seconds_total|gpu_process_memory_bytes|gpu_process_sm|gpu_info|job_info|gpu_memory_used|gpu_temperature|gpu_power|exporter_collector_success)' \
    "$OUT/metrics-during.txt" "$OUT/metrics-after.txt" || true
cat "$OUT/nvidia-smi.txt" "$OUT/nvml-timing.txt"
userdel "$user" || true
