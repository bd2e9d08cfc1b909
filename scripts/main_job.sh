#!/usr/bin/env bash
# The README's main job: caption a camera frame with the embedded default model.
# Until the trained demo model (models/ivl-demo) exists, a tiny random InternVL2 checkpoint stands in:
# its captions are gibberish by construction, but every stage (loading the upstream layout, tiling,
# prompting, generation, decoding) is the real code path.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IVL_VENV:-$REPO/.venv}"
IVL="$VENV/bin/ivl"
cd "$REPO"

MODEL="${IVL_MODEL:-}"
if [ -z "$MODEL" ]; then
    if [ -f models/ivl-demo/config.json ]; then
        MODEL=models/ivl-demo
    else
        MODEL=models/tiny-random
        [ -f "$MODEL/config.json" ] || "$IVL" make-tiny "$MODEL"
        echo "note: no trained demo model in models/ivl-demo yet; using the tiny random checkpoint $MODEL." \
             "Point IVL_MODEL (or --model) at real InternVL2-2B weights for meaningful captions."
    fi
fi
echo "== ivl caption --model $MODEL --image assets/sample_frame.png"
"$IVL" caption --model "$MODEL" --image assets/sample_frame.png
