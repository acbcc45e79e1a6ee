#!/usr/bin/env bash
# The GPU checks of the training path, as run on a lent GPU machine that has PyTorch, transformers and
# accelerate but neither Ray nor TRL and no network: their wheels travel in .whl/ (Ray's without its
# Java jars and source maps, to fit the transfer), the embedded model's config and tokenizer in
# .gpu/smollm2-config/. Writes bench/results-gpu-methods.txt and bench/results-train-gpu.txt (copied
# to $OUT when set). The throughput bench runs first: its median of three is the figure owed; the
# methods check after it, in what is left of one 10-minute call. vLLM's CUDA build (~400 MB) cannot
# travel, so the engine is not checked here.
#   RAYSYNTH_COMMIT=<commit> bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python3 - <<'EOF'
import glob, os, zipfile
for wheel in glob.glob(".whl/*"):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, "/tmp/site")
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)  # ray's gcs_server and raylet are programs
EOF
export PYTHONPATH=/tmp/site:$PWD RAYSYNTH_NO_PROGRESS=1 PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
nvidia-smi -L
python3 -c "import torch, transformers, pyarrow, peft, trl, datasets, ray; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pyarrow', pyarrow.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" || exit 1
cd bench
LOG=${OUT:-/tmp}/gpu-log.txt
python3 -c "from gpu_methods import random_model; from pathlib import Path; random_model(Path('../.gpu/smollm2-config'), Path('/tmp/model'))"
timeout 400 python3 train.py --gpu --workers 1 --batch 8 --steps 40 --rows 256 --repeats 3 --model-dir /tmp/model 2>&1 | tee -a "$LOG" | grep -v " INFO \|Warning\|warn(" | tail -30
timeout 170 python3 gpu_methods.py --random-from ../.gpu/smollm2-config --steps 30 2>&1 | tee -a "$LOG" | grep -v " INFO \|Warning\|warn(" | tail -40
[ -n "${OUT:-}" ] && cp results-gpu-methods.txt results-train-gpu.txt "$OUT"/ 2>/dev/null
true
