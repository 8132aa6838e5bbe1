#!/usr/bin/env bash
# Each extra stands alone: install the package with ONE extra into a fresh virtual environment (no system
# site-packages, nothing else of ours) and start what that extra is for. Usage: .ci/extra_alone.sh [EXTRA...]
# (default: serve). Takes minutes per extra (a full dependency install); run by .ci/run after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip wheel --quiet --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/diga_sdk-*.whl)
for extra in "${@:-serve}"; do
  start=$(date +%s)
  "$PYTHON" -m venv "$work/venv-$extra"
  py="$work/venv-$extra/bin/python"
  # the constraints file pins torch to the CPU wheel on this machine (a bare range would pull a CUDA build)
  "$py" -m pip install --quiet -c constraints.txt "$wheel[$extra]"
  case "$extra" in
    serve)   # the service module imports everything `bentoml serve` needs; the supervisor's CLI starts
             "$py" -c "import diga_sdk.serving.service, diga_sdk.serving.supervise, diga_sdk.serving.client"
             "$work/venv-$extra/bin/diga" serve --help > /dev/null ;;
    export)  "$py" -c "import onnx, onnxruntime, openvino, diga_sdk.runtime.onnx_export, diga_sdk.export.quantize"
             "$work/venv-$extra/bin/diga" export --help > /dev/null ;;
    kernels) "$py" -c "import triton, diga_sdk.kernels" ;;
    fleet)   "$py" -c "import flwr, diga_sdk.fleet"
             "$work/venv-$extra/bin/diga" fleet --help > /dev/null ;;
    *)       "$py" -c "import diga_sdk" ;;
  esac
  echo "extra '$extra' alone: installed and started in $(( $(date +%s) - start )) s"
done
