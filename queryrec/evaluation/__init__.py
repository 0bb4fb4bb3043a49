"""Offline evaluation: AUC, logloss, GAUC, relative improvement and the paper's slices."""
