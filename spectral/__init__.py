"""The offline spectral codec's internals (dsp: STFT, Griffin-Lim, residual vector quantisation) and its fitting
(fit: `python -m spectral.fit --data DIR --out FILE`). The codec itself, behind the paper's interface, is codec.py."""
