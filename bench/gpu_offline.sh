#!/bin/bash
# The GPU table of bench/run.py on a machine that has torch with CUDA but no network.
#
# Bring, in the repo root (ignored by git):
#   .whl/        wheels for python 3.12 of what that machine lacks or has in another version. On a
#                machine with network, for a cp312 manylinux target:
#                  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#                    transformers==5.23.0 peft==0.21.2 tokenizers==0.23.3 pydantic==2.14.3 pydantic_core==2.50.4 \
#                    annotated-types==0.8.0 typing-inspection==0.4.5 datasketch==2.0.0 trl==1.16.0 \
#                    liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 accelerate==1.15.0 \
#                    regex==2026.11.19 fsspec==2026.9.0
#                (about 24 MiB; the GPU image's own torch, triton, huggingface_hub, pyarrow and numpy are used)
#   .gpubench/tokenizer/  SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json,
#                chat_template.jinja, config.json) from the converted base in LORAFORGE_HOME.
# Then: OUT=/some/dir bash bench/gpu_offline.sh
# Dry run on a CPU (no Liger there): DEVICE=cpu MODELS=random:tiny@1 EXTRA=--no-liger ARMS=B1,B2,C bash bench/gpu_offline.sh   (tables in $OUT/gpu.md, every run in $OUT/gpu.md.runs.jsonl)
# The models are random-weight shapes (bench/common.py SHAPES): no weights travel.
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/loraforge-gpu-bench}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton HF_HUB_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
LIGER=liger_kernel; [ "${DEVICE:-cuda}" = cpu ] && LIGER=trl
python3 -c "import torch, transformers, peft, trl, datasets, $LIGER, loraforge.train; print('imports ok', torch.__version__)" \
  | tee -a "$OUT/env.txt" || exit 1
cd bench
# sized for one device call of 10 minutes: each model's arms once, the 8B first
timeout "${BENCH_LIMIT:-480}" python3 run.py --device "${DEVICE:-cuda}" --tokenizer ../.gpubench/tokenizer \
  --models "${MODELS:-random:llama-8b@1,random:llama-1b@1,random:smollm2-135m@1}" --arms "${ARMS:-B1,B2,C}" \
  --rows-per-step "${ROWS:-64}" --steps "${STEPS:-4}" --warmup-steps 1 --pack-len 1024 \
  --arm-timeout-s "${ARM_TIMEOUT:-120}" --out "$OUT/gpu.md" $EXTRA \
  2>&1 | tee "$OUT/log.txt"
