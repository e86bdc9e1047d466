"""What the paper's files stand on: audio files, stem activity maps, the instrument table, checkpoints and the
codecs rebuilt from them, the offline spectral codec, where training tokens come from (pool), devices, DDP and
timing; and what the commands share behind their command lines (adding stems, MIDI out, training's
validation, the page's engine and files)."""
