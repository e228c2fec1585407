"""A sum tree over ``capacity`` non-negative leaves, in NumPy: O(log n) updates and prefix-sum searches,
vectorised over a batch of leaves or values.

Layout: one float64 array ``tree`` of ``2 * P`` nodes, ``P`` the smallest power of two >= capacity.
Node 1 is the root; node ``i`` has children ``2i`` and ``2i + 1``; leaf ``j`` is node ``P + j``
(leaves ``capacity .. P - 1`` stay 0). Every inner node holds the sum of its children, recomputed from
them on each update (no running deltas, so no drift however many updates happen).
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """A sum tree of ``capacity`` leaves (all 0 at first).

    Args:
        capacity: the number of leaves (>= 1).
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"SumTree: expected capacity to be an int >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self._leaf0 = 1 << max(0, (self.capacity - 1).bit_length())  # P: the first leaf's node
        self._depth = self._leaf0.bit_length() - 1  # levels between the root and the leaves
        self.tree = np.zeros(2 * self._leaf0, np.float64)

    @property
    def total(self) -> float:
        """The sum of all leaves."""
        return float(self.tree[1])

    def leaves(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The values of leaves ``idx`` (a copy)."""
        if isinstance(idx, slice):
            return self.tree[self._leaf0:self._leaf0 + self.capacity][idx].copy()
        return self.tree.take(np.asarray(idx, np.int64) + self._leaf0)

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``idx`` (N,) to ``values`` (N,) (>= 0, finite) and update their ancestors.

        Repeated indices are allowed: the last value of a leaf wins (NumPy assignment order).
        """
        idx = np.asarray(idx, np.int64).reshape(-1)
        values = np.asarray(values, np.float64).reshape(-1)
        if idx.shape != values.shape:
            raise ValueError(f"SumTree.set: expected as many values as indices, got {values.shape} and {idx.shape}")
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.capacity:
            raise IndexError(f"SumTree.set: expected leaves in [0, {self.capacity}), got {idx.min()}..{idx.max()}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("SumTree.set: expected finite values >= 0")
        node = idx + self._leaf0
        tree = self.tree
        tree[node] = values
        for _ in range(self._depth):  # a repeated node is recomputed twice from the same children: harmless
            node >>= 1
            child = node << 1
            tree[node] = tree.take(child) + tree.take(child + 1)

    def rebuild(self, values: np.ndarray) -> None:
        """Set every leaf at once from ``values`` (capacity,) and recompute all inner nodes (O(n))."""
        values = np.asarray(values, np.float64)
        if values.shape != (self.capacity,):
            raise ValueError(f"SumTree.rebuild: expected values of shape ({self.capacity},), got {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("SumTree.rebuild: expected finite values >= 0")
        tree = self.tree
        tree[:] = 0.0
        tree[self._leaf0:self._leaf0 + self.capacity] = values
        lo = self._leaf0
        while lo > 1:
            parents = np.arange(lo >> 1, lo)
            tree[parents] = tree[2 * parents] + tree[2 * parents + 1]
            lo >>= 1

    def find(self, values: np.ndarray) -> np.ndarray:
        """For each v of ``values`` (N,), in ``[0, total)``, the leaf j with
        ``prefix(j) <= v < prefix(j) + leaf(j)``, where ``prefix(j)`` is the sum of the leaves before j.

        A uniform v in ``[0, total)`` thus picks leaf j with probability ``leaf(j) / total``. A leaf of 0
        is never returned (roundoff near a boundary resolves to a neighbouring positive leaf), so the
        tree must not be empty.
        """
        if not self.tree[1] > 0:
            raise ValueError("SumTree.find: the tree is empty (total 0); nothing can be drawn")
        v = np.asarray(values, np.float64).reshape(-1).copy()
        leaves = self._descend(v, careful=False)
        bad = self.tree.take(leaves + self._leaf0) <= 0  # roundoff past the last positive leaf: rare
        if bad.any():
            leaves[bad] = self._descend(np.asarray(values, np.float64).reshape(-1)[bad], careful=True)
        return leaves

    def _descend(self, v: np.ndarray, careful: bool) -> np.ndarray:
        """Walk from the root to a leaf for each v (modified in place). ``careful`` never steps into an
        empty subtree (so never ends on a zero leaf), at the cost of one more gather per level."""
        tree = self.tree
        node = np.ones(v.shape, np.int64)
        for _ in range(self._depth):
            node <<= 1
            left_sum = tree.take(node)
            right = v >= left_sum
            if careful:
                right &= tree.take(node + 1) > 0
            v -= left_sum * right
            node += right
        return node - self._leaf0
