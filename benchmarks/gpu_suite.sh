#!/usr/bin/env bash
# The GPU checks in one command, on a machine with a CUDA device:
#
#   bash benchmarks/gpu_suite.sh            # writes benchmarks/results/gpu_<hostname>/
#
# 1. device.json           the device (nvidia-smi and torch.cuda names, driver, torch build)
# 2. pytest_gpu.xml / .log  `pytest -m gpu` (CUDA paths equal the CPU results; tf32 errors)
# 3. kernels_resnet18.json  benchmarks/kernels.py --device cuda: ResNet18 (CIFAR shape), N = 5000,
#                           pseudo and trace, structured + auto, the torch.func baseline
#                           extrapolated from two block pairs
# 4. precision_resnet18.json benchmarks/precision.py --device cuda: float64 vs fp32 / tf32 / bf16
#                           Grams for ResNet18 at N = 5000 (L = 1000, S = 4000 for Σ)
# 5. summary.json           exit status and seconds of every step
#
# Environment: PYTHON (default: .venv/bin/python if present, else python), OUT_DIR, STEP_TIMEOUT
# (seconds per step, default 1800), N (default 5000). A failed step is recorded and the next one
# still runs; the script exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT_DIR="${OUT_DIR:-benchmarks/results/gpu_$(hostname)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-1800}"
N="${N:-5000}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export NTKAL_QUIET=1
mkdir -p "$OUT_DIR"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch ($PYTHON): nothing to measure" >&2
  exit 2
fi

"$PYTHON" - "$OUT_DIR/device.json" <<'EOF'
import json, platform, socket, subprocess, sys
import torch
info = {"hostname": socket.gethostname(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "capability": list(torch.cuda.get_device_capability(0))}
try:
    info["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
except (OSError, subprocess.SubprocessError) as err:
    info["nvidia_smi"] = f"unavailable: {err}"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print("device:", info["devices"])
EOF

declare -a NAMES STATUS SECONDS_
step() {  # step NAME COMMAND...
  local name="$1"; shift
  echo "==> $name: $*"
  local t0=$SECONDS
  timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  NAMES+=("$name"); STATUS+=("$rc"); SECONDS_+=("$((SECONDS - t0))")
  echo "<== $name: exit $rc after $((SECONDS - t0)) s"
}

step pytest_gpu "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT_DIR/pytest_gpu.xml"
step kernels_resnet18 "$PYTHON" benchmarks/kernels.py --device cuda --models resnet18 --n "$N" \
  --kinds pseudo,trace --impls structured,auto --skip-slow-baseline \
  --out "$OUT_DIR/kernels_resnet18.json"
step precision_resnet18 "$PYTHON" benchmarks/precision.py --device cuda --models resnet18 \
  --n "$N" --kinds pseudo,trace --out "$OUT_DIR/precision_resnet18.json"

failed=0
{
  echo "{"
  echo "  \"out_dir\": \"$OUT_DIR\","
  echo "  \"steps\": ["
  for i in "${!NAMES[@]}"; do
    sep=","; [ "$i" -eq $((${#NAMES[@]} - 1)) ] && sep=""
    echo "    {\"name\": \"${NAMES[$i]}\", \"exit\": ${STATUS[$i]}, \"seconds\": ${SECONDS_[$i]}}$sep"
    [ "${STATUS[$i]}" -ne 0 ] && failed=1
  done
  echo "  ]"
  echo "}"
} > "$OUT_DIR/summary.json"
cat "$OUT_DIR/summary.json"
exit "$failed"
