"""Pure math on models and matrices: Hessian spectra and sharpness, low-rank (EVBMF) metrics."""
