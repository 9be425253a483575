#!/usr/bin/env bash
# Every compare behind docs/RESULTS.md, in order, resumable: rerun the script after an
# interruption and `--reuse` keeps each finished run (and finished tuning trial).
#   bash benchmarks/results/rerun_results.sh [SECTION...]     (default: all sections)
# Needs: unimargin[tune]; Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist);
# MNIST5K=path/to/mnist5k.csv written by benchmarks/results/mnist5k_csv.py.
set -euo pipefail
OUT=${OUT:-runs}
MNIST5K=${MNIST5K:-mnist5k.csv}
FASHION="--dataset fashion-mnist --model mlp --epochs 10 --tune lr --trials 6 --tune-epochs 5 --jobs 2"
# the imbalance / noise runs tune more cheaply (4 trials of 3 epochs; still on their own clean validation split)
CONDITION="--dataset fashion-mnist --model mlp --epochs 10 --tune lr --trials 4 --tune-epochs 3 --jobs 2"
FOUR=softmax,lmdl,bce-u,cosface
# [LMDL]'s recipe scaled to 20 epochs (steps at 30/60/80 % x0.2, no warm-up, 30-d features, delta_d 6);
# shared: every head at their SGD lr 0.001; tuned: the same recipe with each head's lr tuned
RECIPE_SHAPE="--optimizer sgd --momentum 0.9 --nesterov --weight-decay 5e-4 --schedule multistep --milestones 6,12,16 --gamma 0.2 --warmup-epochs 0 --feat-dim 30 --head-param lmdl:delta_d=6"
RECIPE="$RECIPE_SHAPE --lr 0.001"

run() {  # NAME ARGS...: one compare, timed, with the load before and after
  local name=$1; shift
  echo "=== $name start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  local t0=$SECONDS
  unimargin compare --out "$OUT/$name" --reuse "$@"
  echo "=== $name done in $((SECONDS - t0)) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

section() {
  case $1 in
    mnist1d) run mnist1d_tuned --dataset mnist1d --heads all --seeds 5 --epochs 20 --tune lr --trials 6 --jobs 2 ;;
    fashion) run fashion_tuned $FASHION --heads softmax,lmdl,bce-u,cosface,arcface --seeds 5 ;;
    uniface)  # bce-u in UniFace's normalized form, paired with the same (reused) softmax runs
      mkdir -p "$OUT/fashion_uniface"
      [ -d "$OUT/fashion_uniface/runs/softmax" ] || { cp -r "$OUT/fashion_tuned/runs" "$OUT/fashion_uniface/"; \
        mkdir -p "$OUT/fashion_uniface/tune" && cp -r "$OUT/fashion_tuned/tune/softmax" "$OUT/fashion_uniface/tune/" 2>/dev/null || true; }
      run fashion_uniface $FASHION --heads softmax,bce-u --head-param bce-u:normalize=true \
        --head-param bce-u:scale=16 --head-param bce-u:margin=0.35 --seeds 5 ;;
    mnist5k) run mnist5k_tuned --dataset csv --data-dir "$MNIST5K" --label-column label --heads $FOUR \
        --seeds 5 --epochs 20 --tune lr --trials 6 --jobs 2 ;;
    imb01) run fashion_imb0.1 $CONDITION --heads $FOUR --seeds 3 --imbalance 0.1 ;;
    noise) run fashion_noise0.2 $CONDITION --heads $FOUR --seeds 3 --label-noise 0.2 ;;
    imb001) run fashion_imb0.01 $CONDITION --heads $FOUR --seeds 3 --imbalance 0.01 ;;
    recipe_shared) run mnist1d_recipe_shared --dataset mnist1d --heads all --seeds 5 --epochs 20 $RECIPE --jobs 2 ;;
    recipe_tuned) run mnist1d_recipe_tuned --dataset mnist1d --heads all --seeds 5 --epochs 20 $RECIPE_SHAPE \
              --tune lr --trials 6 --jobs 2 ;;
    lmdl_default)  # sensitivity: softmax and lmdl at their recommended rates (no tuning), same protocol
      run mnist1d_default --dataset mnist1d --heads softmax,lmdl --seeds 5 --epochs 20 --jobs 2 ;;
    openset) run fashion_openset_tuned $CONDITION --heads $FOUR --seeds 3 --unknown-classes 7,8,9 ;;
    *) echo "unknown section $1" >&2; exit 2 ;;
  esac
}

for s in "${@:-mnist1d fashion uniface mnist5k imb01 noise recipe_shared imb001 recipe_tuned lmdl_default openset}"; do
  for one in $s; do section "$one"; done
done
