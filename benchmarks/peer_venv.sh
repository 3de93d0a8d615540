#!/bin/sh
# A venv with Ultralytics for benchmarks/peer_ultralytics.py; never part of the project (AGPL, torch).
# Ultralytics imports torchvision for its NMS on videos, so torch and torchvision must be a matching
# pair: on these machines pip takes 2.14.1 + 0.29.1 (x86_64) or 2.9.1 + 0.24.1 (aarch64) from local
# wheels. Ultralytics goes in without its dependencies (pip would pick a newer torch and the
# desktop OpenCV) and with the few packages it imports.
#   bash benchmarks/peer_venv.sh /tmp/ulenv
set -eu
venv=${1:?usage: peer_venv.sh VENV_DIR}
ort_version=$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo 1.32.0)
python3 -m venv "$venv"
case $(uname -m) in
    aarch64) torch_pair="torch==2.9.1 torchvision==0.24.1" ;;
    *) torch_pair="torch==2.14.1 torchvision==0.29.1" ;;
esac
# shellcheck disable=SC2086 # two requirements, split on purpose
"$venv/bin/pip" install -q $torch_pair
"$venv/bin/pip" install -q --no-deps ultralytics==8.4.190
"$venv/bin/pip" install -q "onnxruntime==$ort_version" onnx onnxslim opencv-python-headless pillow pyyaml \
    requests psutil matplotlib scipy polars ultralytics-thop
"$venv/bin/python" -c 'import ultralytics; print("ultralytics", ultralytics.__version__)'
