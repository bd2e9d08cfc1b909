#!/usr/bin/env bash
# The README's main job: the captioner node on a short stream of Habitat-bridge frames (CPU-rendered rooms)
# through real ROS 2 topics, printing captions as they arrive. Model: $IVL_MODEL, else the embedded demo
# model (models/ivl-demo), else a tiny random checkpoint (gibberish captions, real code path).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IVL_VENV:-$REPO/.venv}"
cd "$REPO"

MODEL="${IVL_MODEL:-}"
if [ -z "$MODEL" ]; then
    if [ -f models/ivl-demo/config.json ]; then
        MODEL=models/ivl-demo
    else
        MODEL=models/tiny-random
        [ -f "$MODEL/config.json" ] || "$VENV/bin/ivl" make-tiny "$MODEL"
        echo "note: no demo model in models/ivl-demo; using the tiny random checkpoint $MODEL (gibberish captions)."
    fi
fi
echo "== ivl caption --model $MODEL --image assets/sample_frame.png"
"$VENV/bin/ivl" caption --model "$MODEL" --image assets/sample_frame.png
echo "== ivl-ros-demo: captioner + Habitat bridge over ROS 2"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$VENV/bin/ivl-ros-demo" --captions 5 "model_path:=$MODEL"
