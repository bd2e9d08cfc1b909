"""A top-down navigability grid (like habitat-sim's topdown maps) with shortest paths on it."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_STEPS = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]


@dataclass
class NavGrid:
    """``free[row, col]`` is True where the agent's centre may be; row = z, col = x; cell centres at origin + idx."""

    free: np.ndarray
    origin: tuple[float, float]  # world (x, z) of cell (0, 0)'s centre
    cell: float = 0.1
    floor_y: float = 0.0

    def to_cell(self, position: Sequence[float]) -> tuple[int, int]:
        return (round((position[2] - self.origin[1]) / self.cell), round((position[0] - self.origin[0]) / self.cell))

    def to_world(self, rc: tuple[int, int]) -> list[float]:
        return [self.origin[0] + rc[1] * self.cell, self.floor_y, self.origin[1] + rc[0] * self.cell]

    def is_free(self, position: Sequence[float]) -> bool:
        r, c = self.to_cell(position)
        return 0 <= r < self.free.shape[0] and 0 <= c < self.free.shape[1] and bool(self.free[r, c])

    def largest_component(self) -> np.ndarray:
        """Mask of the largest 8-connected free region, so sampled starts can always reach their goals."""
        labels = np.zeros(self.free.shape, dtype=np.int32)
        best, best_size, label = 0, 0, 0
        for start in zip(*np.nonzero(self.free), strict=True):
            if labels[start]:
                continue
            label += 1
            labels[start] = label
            stack, size = [start], 0
            while stack:
                r, c = stack.pop()
                size += 1
                for dr, dc in _STEPS:
                    n = (r + dr, c + dc)
                    if 0 <= n[0] < labels.shape[0] and 0 <= n[1] < labels.shape[1] and self.free[n] and not labels[n]:
                        labels[n] = label
                        stack.append(n)
            if size > best_size:
                best, best_size = label, size
        return labels == best if best else np.zeros_like(self.free)

    def shortest_path(self, start: tuple[int, int], goals: set[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """A* (octile metric, no corner cutting) from ``start`` to the nearest of ``goals``; None if unreachable."""
        if not goals or not self.free[start]:
            return None
        goal_list = list(goals)

        def h(rc: tuple[int, int]) -> float:
            return min(_octile(rc, g) for g in goal_list[:64])  # a subset keeps h cheap and admissible-ish

        dist = {start: 0.0}
        prev: dict[tuple[int, int], tuple[int, int]] = {}
        heap = [(h(start), 0.0, start)]
        while heap:
            _, d, cur = heapq.heappop(heap)
            if cur in goals:
                path = [cur]
                while path[-1] in prev:
                    path.append(prev[path[-1]])
                return path[::-1]
            if d > dist.get(cur, math.inf):
                continue
            for dr, dc in _STEPS:
                n = (cur[0] + dr, cur[1] + dc)
                if not (0 <= n[0] < self.free.shape[0] and 0 <= n[1] < self.free.shape[1]) or not self.free[n]:
                    continue
                if dr and dc and not (self.free[cur[0] + dr, cur[1]] and self.free[cur[0], cur[1] + dc]):
                    continue
                nd = d + (math.sqrt(2.0) if dr and dc else 1.0)
                if nd < dist.get(n, math.inf):
                    dist[n], prev[n] = nd, cur
                    heapq.heappush(heap, (nd + h(n), nd, n))
        return None

    def path_to_waypoints(self, path: list[tuple[int, int]], step: float = 0.25) -> list[list[float]]:
        """Resample a cell path to points ``step`` metres apart (Habitat's forward step), ends included."""
        pts = np.array([self.to_world(rc) for rc in path])
        if len(pts) < 2:
            return [list(map(float, p)) for p in pts]
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        samples = list(np.arange(0.0, cum[-1], step)) + [cum[-1]]
        out = []
        for s in samples:
            i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(seg) - 1)
            t = 0.0 if seg[i] == 0 else (s - cum[i]) / seg[i]
            out.append([float(v) for v in pts[i] + t * (pts[i + 1] - pts[i])])
        return out


def _octile(a: tuple[int, int], b: tuple[int, int]) -> float:
    dr, dc = abs(a[0] - b[0]), abs(a[1] - b[1])
    return max(dr, dc) + (math.sqrt(2.0) - 1.0) * min(dr, dc)
