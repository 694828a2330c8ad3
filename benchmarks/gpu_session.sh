#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, phase by phase, on a machine like ../shared/gpu/README.md's
# (torch + lightning + transformers installed, no registry). Run from the project root:
#   bash benchmarks/gpu_session.sh setup      # carried wheels (.whl/) + this package; starts the kernel build
#   bash benchmarks/gpu_session.sh gpu-tests  # GPU-only tests that need no kernels (CUDA graphs, profiler, NaN)
#   bash benchmarks/gpu_session.sh hf         # throughput harness, transformer backbones (no kernels needed):
#                                             # dense, realistic (length buckets) and packed
#   bash benchmarks/gpu_session.sh hf-graphs  # the same with model.cuda_graphs (dense and realistic)
#   bash benchmarks/gpu_session.sh fsdp       # FSDP preset: fit of a tiny and a 130M-class backbone; FSDP2 tiny
#   bash benchmarks/gpu_session.sh kernels    # waits for the build; kernel parity tests; Mamba speed study
#   bash benchmarks/gpu_session.sh mamba      # throughput harness, Mamba backbones: training eager and with
#                                             # CUDA graphs, reranking eager
# Logs go to $OUT (or ./gpu-out). .whl/ holds our dependencies missing there (ir_datasets, ir_measures,
# jsonargparse, omegaconf, bm25s, ...) as cp312 manylinux wheels: see CONTRIBUTING.md.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export IR_DATASETS_HOME=${IR_DATASETS_HOME:-/tmp/irds}
# Keep the kernel build (16 parallel nvcc jobs) off the cores the measurements use.
BUILD_CPUS=${BUILD_CPUS:-0-11}
RUN_CPUS=${RUN_CPUS:-12-15}
PIN_RUN=() PIN_BUILD=()
if command -v taskset > /dev/null; then PIN_RUN=(taskset -c "$RUN_CPUS") PIN_BUILD=(taskset -c "$BUILD_CPUS"); fi
run() { "${PIN_RUN[@]}" "$@"; }

case "${1:?phase}" in
setup)
    nvidia-smi -L
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
    python3 -c "import lightning_rank, torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
    if [ -d .kernels ] && [ ! -f /tmp/kbuild/done ]; then
        setsid nohup "${PIN_BUILD[@]}" bash .kernels/build_kernels.sh > /tmp/kbuild.out 2>&1 < /dev/null &
        echo "kernel build started"
    fi
    ;;
gpu-tests)
    run python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_throughput.py \
        tests/test_resume.py tests/test_packing.py -k "gpu or graph or cuda" 2>&1 | tail -30 | tee "$OUT/pytest-gpu.txt"
    ;;
hf)
    run python3 benchmarks/throughput.py --backbones ${HF_BACKBONES:-bert roberta pythia llama} \
        --shapes ${SHAPES:-dense realistic packed} --json "$OUT/throughput-hf.json" \
        2>&1 | grep -v -i warn | tee "$OUT/throughput-hf.txt"
    ;;
hf-graphs)
    run python3 benchmarks/throughput.py --backbones ${HF_BACKBONES:-bert roberta pythia} --tasks train \
        --cuda-graphs --pad-to-multiple-of 32 --shapes ${SHAPES:-dense realistic} \
        --json "$OUT/throughput-hf-graphs.json" 2>&1 | grep -v -i warn | tee "$OUT/throughput-hf-graphs.txt"
    ;;
fsdp)
    common=(--config configs/demo.yaml --config configs/strategy/fsdp.yaml --trainer.devices 1
            --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/fsdp-runs)
    run lightning-rank fit "${common[@]}" --trainer.max_epochs 2 2>&1 | grep -v -i warn | tail -25 | tee "$OUT/fsdp-tiny.txt"
    run lightning-rank fit "${common[@]}" --model.backbone pythia --trainer.max_steps 60 --model.lr 1e-4 \
        --model.backbone_args '{"tokenizer": "builtin:words", "config": {"hidden_size": 768,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}}' \
        2>&1 | grep -v -i warn | tail -25 | tee "$OUT/fsdp-pythia160m.txt"
    fsdp2=(--config configs/demo.yaml --config configs/strategy/fsdp2.yaml --trainer.devices 1
           --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/fsdp2-runs)
    run lightning-rank fit "${fsdp2[@]}" --trainer.max_epochs 2 2>&1 | grep -v -i warn | tail -12 \
        | tee "$OUT/fsdp2-tiny.txt"
    ;;
fsdp-mamba)
    common=(--config configs/demo.yaml --config configs/strategy/fsdp.yaml --trainer.devices 1
            --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/fsdp-runs)
    run lightning-rank fit "${common[@]}" --model.backbone mamba2 --trainer.max_steps 60 --model.lr 1e-4 \
        --model.backbone_args '{"tokenizer": "builtin:words", "use_kernels": "always",
            "config": {"d_model": 768, "n_layer": 24}}' \
        2>&1 | grep -v -i warn | tail -25 | tee "$OUT/fsdp-mamba2-130m.txt"
    ;;
kernels)
    for _ in $(seq 120); do [ -f /tmp/kbuild/done ] && break; sleep 5; done
    cat /tmp/kbuild/status
    run python3 -m pytest -q -p no:cacheprovider tests/test_mamba.py tests/test_cuda_graphs.py 2>&1 | tail -20 \
        | tee "$OUT/pytest-mamba-gpu.txt"
    ;;
mamba-speed)
    run python3 benchmarks/mamba_speed.py --variants m1 m2 m1+graph m2+graph 2>&1 | grep -v -i warn \
        | tee "$OUT/mamba-speed.txt"
    ;;
mamba)
    for graphs in "" --cuda-graphs; do
        run python3 benchmarks/throughput.py --backbones mamba1 mamba2 --tasks train --shapes dense $graphs \
            --json "$OUT/throughput-mamba${graphs:+-graphs}.json" 2>&1 | grep -v -i warn \
            | tee "$OUT/throughput-mamba${graphs:+-graphs}.txt"
    done
    run python3 benchmarks/throughput.py --backbones mamba1 mamba2 --tasks train --shapes realistic \
        --cuda-graphs --pad-to-multiple-of 32 --json "$OUT/throughput-mamba-realistic.json" 2>&1 \
        | grep -v -i warn | tee "$OUT/throughput-mamba-realistic.txt"
    # reranking (inference, eager): the rows missing from RESULTS.md's harness tables
    run python3 benchmarks/throughput.py --backbones mamba1 mamba2 --tasks rerank --shapes dense realistic \
        --json "$OUT/throughput-mamba-rerank.json" 2>&1 | grep -v -i warn | tee "$OUT/throughput-mamba-rerank.txt"
    ;;
*)
    echo "unknown phase $1" >&2
    exit 2
    ;;
esac
