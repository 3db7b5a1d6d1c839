"""Neighbour batches: training batches made of texts the teacher embeds close together.

The relation loss (:func:`distilrubert.losses.relation_loss`) teaches the student the teacher's similarities
*within a batch*. Drawn at random from a large corpus, a batch almost never holds two texts the teacher
finds close, so the student learns the coarse geometry (which topic, which register) and not the order
among near neighbours — the part paraphrase and retrieval tasks measure. ``scripts/check_agreement.py``
on the reference runs' held-out texts (docs/agreement.md) shows it: the first-stage student, trained on
random batches, follows the teacher on random pairs far better than the e5-initialised one, and within
each text's teacher-nearest neighbours hardly at all better.

``--neighbour-batches G`` composes every batch of ``batch_size / G`` groups of ``G`` texts, each group cut
from one k-means cluster of the teacher's cached sentence embeddings (so a text meets ``G - 1`` of its
neighbours and ``batch_size - G`` texts of other clusters in the same relation-loss row). The clusters come
from the teacher only, on the training corpus: no labels, no evaluation data. Each epoch still visits
every training text once; the order is a function of ``(seed, epoch)`` so a resumed run sees the same
batches.

The k-means needs every training text's teacher embedding: :class:`NeighbourBatches` asks its
:class:`TargetSource` to compute the missing ones first (a progress bar; they are cached for later runs).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["NeighbourBatches", "TargetSource", "chain_order", "neighbour_batches"]


class TargetSource(Protocol):
    """What the batcher needs from the training task: the teacher's sentence embedding of every unit."""

    def unit_embeddings(self, units: np.ndarray) -> np.ndarray:
        """``(len(units), dim)`` float32 teacher sentence embeddings (computed and cached if missing)."""
        ...


def neighbour_batches(labels: np.ndarray, train_idx: np.ndarray, batch_size: int, group: int, seed: int,
                      epoch: int, lengths: np.ndarray | None = None, window: int = 64) -> list[np.ndarray]:
    """One epoch of batches of ``batch_size / group`` groups, each group ``group`` texts of one cluster.

    ``train_idx`` is ordered by (cluster, length, random) and cut into groups, so a group also holds texts of
    similar length; the groups are shuffled, then sorted by their longest text within windows of
    ``window`` batches, so that the groups of a batch need about the same padding (a batch of random
    lengths pads to its longest text: about 3x the tokens on the reference corpus). The batches are
    shuffled at the end.

    Args:
        labels: ``(n_units,)`` cluster of every unit.
        train_idx: The training units.
        batch_size: Texts per batch (a multiple of ``group``).
        group: Texts of one cluster per group.
        seed, epoch: The order is a function of these only.
        lengths: ``(n_units,)`` token counts (``None``: all equal).
        window: Batches whose groups are sorted by length together.

    Returns:
        ``len(train_idx) // batch_size`` batches (fewer when the groups do not fill the last one); every
        training unit appears at most once.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    order = rng.permutation(train_idx)
    size = np.zeros(len(labels), dtype=np.int64) if lengths is None else np.asarray(lengths)
    order = order[np.lexsort((size[order], labels[order]))]  # by cluster, then length; random among equals
    n_groups = len(order) // group
    groups = order[: n_groups * group].reshape(n_groups, group)[rng.permutation(n_groups)]
    per_batch = batch_size // group
    span = window * per_batch
    longest = size[groups].max(axis=1)
    for begin in range(0, n_groups, span):
        part = slice(begin, begin + span)
        groups[part] = groups[part][np.argsort(longest[part], kind="stable")]
    n_batches = n_groups // per_batch
    batches = [groups[b * per_batch:(b + 1) * per_batch].reshape(-1) for b in range(n_batches)]
    return [batches[i] for i in rng.permutation(n_batches)]


def chain_order(centroids: np.ndarray) -> np.ndarray:
    """``(k,)`` new label of each centroid: its position on a greedy nearest-neighbour tour (cosine).

    >>> chain_order(np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])).tolist()  # 0 -> 2 -> 1
    [0, 2, 1]
    """
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    k = len(unit)
    visited = np.zeros(k, dtype=bool)
    position = np.empty(k, dtype=np.int64)
    current = 0
    for step in range(k):
        visited[current] = True
        position[current] = step
        if step + 1 < k:
            sims = unit @ unit[current]
            sims[visited] = -np.inf
            current = int(np.argmax(sims))
    return position


class NeighbourBatches:
    """The ``batcher`` of :func:`distilrubert.trainer.train` for ``--neighbour-batches``.

    Clusters the units once (on the first call, after the task has opened its teacher cache), with
    ``len(units) / (4 * group)`` clusters so a cluster holds about four groups.
    """

    def __init__(self, source: TargetSource, n_units: int, group: int, seed: int) -> None:
        self.source, self.n_units, self.group, self.seed = source, n_units, group, seed
        self.labels: np.ndarray | None = None
        self.report: dict[str, float | int] = {}

    def _cluster(self) -> np.ndarray:
        from sklearn.cluster import MiniBatchKMeans

        vectors = self.source.unit_embeddings(np.arange(self.n_units))
        n_clusters = max(2, min(self.n_units // (4 * self.group), 4096))
        start = time.perf_counter()
        kmeans = MiniBatchKMeans(n_clusters=n_clusters, batch_size=4096, n_init=1, max_iter=20,
                                 random_state=self.seed)
        labels = kmeans.fit_predict(vectors).astype(np.int64)
        # k-means on sentence embeddings gives clusters of very uneven size (many smaller than a group), so
        # groups often span several clusters: relabel them along a nearest-centroid chain so that the
        # clusters a group spans are neighbours too.
        labels = chain_order(kmeans.cluster_centers_)[labels]
        sizes = np.bincount(labels, minlength=n_clusters)
        self.report = {"clusters": n_clusters, "median_cluster": int(np.median(sizes)),
                       "largest_cluster": int(sizes.max()), "seconds": round(time.perf_counter() - start, 1)}
        logger.info("neighbour batches: %d k-means clusters of the teacher's sentence embeddings "
                    "(median %d texts, largest %d) in %.1f s", n_clusters, self.report["median_cluster"],
                    self.report["largest_cluster"], self.report["seconds"])
        return labels

    def __call__(self, lengths: np.ndarray, train_idx: np.ndarray, batch_size: int, seed: int,
                 epoch: int) -> list[np.ndarray]:
        if self.labels is None:
            self.labels = self._cluster()
        return neighbour_batches(self.labels, train_idx, batch_size, self.group, seed, epoch, lengths)
