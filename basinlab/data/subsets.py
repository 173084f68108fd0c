"""Quick runs on part of a split: a seeded, class-stratified subset (or the first N examples).

Stored datasets are often sorted by class (image folders always are; the prepared CIFAR-10 test batch
is), so "the first N" can be one class. The stratified subset takes from every class in proportion,
is the same in every run and process (its own fixed seed, SUBSET_SEED), and is nested: the subset of
N is inside that of N + k.

How: each class's examples get a seeded random rank r in 0..n_c-1 and the key (r + 1/2) / n_c; sorting
all examples by key gives an order whose every prefix holds each class within one example of its
share. The subset of N is the first N of that order, returned in stored order.
"""
from __future__ import annotations

import numpy as np

# The subsets' own seed, the same for every run: runs of different --seed (a paper's five seeds) train and
# validate on the same examples, so their differences are the seed's, not the subset's.
SUBSET_SEED = 0


def subset_indices(labels, limit: int | None, seed: int, mode: str = "stratified") -> np.ndarray | None:
    """Indices (ascending) of the examples to keep, or None for all of them."""
    labels = np.asarray(labels)
    if limit is None or limit >= len(labels):
        return None
    if mode == "first":
        return np.arange(limit)
    rng = np.random.default_rng([seed, 0x5B5E7])  # its own stream: the subset never moves other draws
    keys = np.empty(len(labels))
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + 0.5) / len(members)
    tiebreak = rng.random(len(labels))  # equal keys (classes of equal size): a seeded order among them
    order = np.lexsort((tiebreak, keys))
    return np.sort(order[:limit])


def describe_subset(split: str, labels, total: int, mode: str, num_classes: int) -> list[str]:
    """Log lines: how many examples of how many, per-class counts, and a warning for missing classes."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    present = int((counts > 0).sum())
    low, high = int(counts[counts > 0].min()), int(counts.max())
    spread = f"{low} per class" if low == high else f"{low}-{high} per class"
    how = "stratified by class" if mode == "stratified" else "the first ones stored"
    lines = [f"{split} subset: {len(labels):,} of {total:,} examples, {how}; {present} classes, {spread}"]
    if present < num_classes:
        lines.append(f"warning: the {split} subset holds {present} of the {num_classes} classes the model "
                     f"predicts (its accuracy says little about the others)")
    return lines
