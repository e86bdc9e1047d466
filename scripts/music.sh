#!/usr/bin/env bash
# The shipped model, checkpoints/stemgen-music.pt, from nothing: its data, its eight training stages, and shipping.
#
#   bash scripts/music.sh            # about 9 hours on 2 CPU cores (7 h 25 min of training steps, the rest
#                                    # rendering and tokenising the pools)
#
# The `music` recipe (training/recipes.py) on composed songs and real works from music21's corpus (bach/ is never
# rendered: it is held out for evaluation), one General MIDI program per class. Each stage starts from the
# previous stage's best weights (--init-from) on a larger pool of pairs; the flags are those stored in the
# checkpoint's provenance (python -c "import torch; print(torch.load('checkpoints/stemgen-music.pt',
# weights_only=True)['provenance']['stages'])"). Every stage resumes where it stopped (--resume) when run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- data: music1 (corpus works in two keys per chunk: scripts/music1.sh) and music2 (the same in six keys),
# the same composed songs
source scripts/music1.sh
[ -f $CODEC ] || python -m spectral.fit --data data/music1 --out $CODEC
mkdir -p data/music2 && { [ -e data/music2/composed ] || ln -s ../music1/composed data/music2/composed; }
[ -d data/music2/palestrina ] || python -m songs.corpus --out data/music2/palestrina --folders palestrina \
    --max-works 400 --chunks 1 --transpositions 6 --seconds 20 $RENDER
[ -d data/music2/corpus ] || python -m songs.corpus --out data/music2/corpus --folders $WORKS \
    --chunks 2 --transpositions 6 --seconds 20 $RENDER

# ---- training: eight stages, each from the last one's best weights
stage() {  # stage OUT [FLAGS...]: train (or resume) one stage into runs/OUT
    local out=runs/$1; shift
    if [ -f "$out/ckpt.pt" ]; then python train.py --out "$out" --resume
    else python train.py --recipe music --out "$out" --codec-file $CODEC "$@"; fi
}
stage music-octave --data data/music1
stage music2 --data data/music2 --lr 0.001 --hold 6000 --decay 5800 --max-steps 12000 --patience 12000 \
    --pool-pairs 16384 --init-from runs/music-octave/best.pt
stage music3 --data data/music2 --lr 0.0004 --warmup 100 --hold 500 --decay 4400 --max-steps 5000 --patience 5000 \
    --pool-pairs 16384 --seed 1 --init-from runs/music2/best.pt
# (the fourth was planned for 16000 steps and stopped by hand at 14000; the schedule does not depend on max-steps)
stage music4 --data data/music2 --lr 0.0005 --hold 6000 --decay 9800 --max-steps 14000 --patience 16000 \
    --pool-pairs 32768 --seed 2 --init-from runs/music3/best.pt
stage music5 --data data/music2 --lr 0.0005 --hold 1500 --decay 12500 --max-steps 14000 --patience 14000 \
    --pool-pairs 32768 --seed 3 --init-from runs/music4/best.pt
stage music6 --data data/music2 --lr 0.0005 --hold 1500 --decay 12500 --max-steps 14000 --patience 14000 \
    --pool-pairs 32768 --seed 4 --init-from runs/music5/best.pt
stage music7 --data data/music2 --lr 0.0003 --hold 1000 --decay 13000 --max-steps 14000 --patience 14000 \
    --pool-pairs 32768 --seed 5 --init-from runs/music6/best.pt
stage music8 --data data/music2 --lr 0.0003 --hold 1000 --decay 11000 --max-steps 12000 --patience 12000 \
    --pool-pairs 32768 --seed 6 --init-from runs/music7/best.pt

# ---- ship: the last stage's best weights in bf16, with their provenance and the sampling chosen on validation
python -m training.ship --out runs/music8 checkpoints/stemgen-music.pt --sampling fine_temperature=0 temperature=0.5 \
    scale_audio=5
