"""Runnable records of our results: the shipped model's recipe (music.sh) and the sweeps behind a choice."""
