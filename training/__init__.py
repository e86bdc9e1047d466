"""What train.py stands on: checkpoints (checkpoint), where training tokens come from (pool), validation and its
report (validation), DDP (distributed); and two commands on a finished run: `python -m training.ship` and
`python -m training.curves`."""
