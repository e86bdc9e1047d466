"""What the paper's files stand on: audio files, stem activity maps, the instrument table, checkpoints and the
codecs rebuilt from them, the offline spectral codec, where training tokens come from (pool), devices, DDP and
timing."""
