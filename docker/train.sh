#!/bin/sh
# The training image's entry point (docker/Dockerfile.train): the offline pipeline from
# raw logs to the bundle the scorer serves, then (with QUERYREC_REDIS_URL) the users'
# histories into Redis.
#
#   queryrec-train [--preset tiny|small|kuaisar-small] [--raw DIR] [--model NAME]
#                  [--epochs N] [--seed N] [--device auto|cpu|cuda] [--no-state]
#                  [--work DIR] [--bundle DIR]
#
# --raw DIR: real KuaiSAR CSVs (mounted read-only) instead of synthetic ones.
# Outputs: --work (/pipeline) {raw,data,diffusion,runs}, the bundle in --bundle
# (/models/bundle, the scorer's QUERYREC_BUNDLE).
set -eu

preset=small
raw=""
model=queryrec
epochs=3
seed=0
device=auto
state=yes
work=/pipeline
bundle=/models/bundle
while [ "$#" -gt 0 ]; do
    case "$1" in
        --preset) preset="$2"; shift 2 ;;
        --raw) raw="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --no-state) state=no; shift ;;
        --work) work="$2"; shift 2 ;;
        --bundle) bundle="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "queryrec-train: unknown argument $1" >&2; exit 2 ;;
    esac
done

set -x
if [ -z "$raw" ]; then
    raw="$work/raw"
    queryrec data synth --out "$raw" --preset "$preset" --seed "$seed" --force
fi
queryrec data prepare --raw "$raw" --out "$work/data" --force
rm -rf "$work/diffusion" "$work/runs/$model"
queryrec diffusion train --data "$work/data" --out "$work/diffusion" --seed "$seed" --device "$device"
queryrec diffusion augment --data "$work/data" --model "$work/diffusion" --device "$device"
queryrec train --data "$work/data" --model "$model" --out "$work/runs/$model" \
    --seed "$seed" --device "$device" --epochs "$epochs"
queryrec export --run "$work/runs/$model" --out "$bundle" --data "$work/data" --force
if [ "$state" = yes ] && [ -n "${QUERYREC_REDIS_URL:-}" ]; then
    queryrec state load --data "$work/data"
fi
