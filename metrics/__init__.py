"""How generated stems are measured (Sec. 3.1 and ours): FAD, MIRDD and its transcriber, the listening report,
musicality (notes, not noise) and codec round trips."""
