# The first pool of the shipped model's data, data/music1: 480 composed songs, and real works of music21's corpus
# (never bach/) in two keys per chunk, one General MIDI program per class. Sourced by scripts/music.sh and
# scripts/timing.sh, from the repository root; each folder is rendered only if it is missing.
WORKS="mozart haydn monteverdi josquin corelli handel verdi joplin weber schumann_robert schumann_clara ciconia
lusitano cpebach liliuokalani johnson_j_r chopin webern schoenberg leadSheet"
RENDER="--seed 1 --one-program-per-class"
CODEC=data/music1/spectral_codec_octave.pt

[ -d data/music1/composed ] || python -m songs.synth --out data/music1/composed --tracks 480 --seconds 10 $RENDER
[ -d data/music1/palestrina ] || python -m songs.corpus --out data/music1/palestrina --folders palestrina \
    --max-works 400 --chunks 1 --transpositions 2 --seconds 20 $RENDER
[ -d data/music1/corpus ] || python -m songs.corpus --out data/music1/corpus --folders $WORKS \
    --chunks 2 --transpositions 2 --seconds 20 $RENDER
