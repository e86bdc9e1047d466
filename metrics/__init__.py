"""How the model and its stems are measured (Sec. 3.1 and ours): FAD, MIRDD, the listening report, musicality
(notes, not noise; the key), pictures, sweeps and their tables, codec round trips, and speed (bench.py)."""
