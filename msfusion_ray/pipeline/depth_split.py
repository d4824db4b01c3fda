"""Which layers each compute node holds: MP-SL's split-and-placement integer program, and two manual splits.

The data owners keep the first and last layers; the compute nodes share the layers in between, each a contiguous
range of at least one layer, in an order the program chooses. The objective is EdgeSys'25's problem P: the
pipeline's per-batch time when full, max over nodes of its forward time + max over nodes of its backward time
(eqs. 3, 10, 11). Each node holds one copy of its layers per data owner and must fit in its memory (eq. 9); the
memory of a range is the exact one of `costs.layers.part_memory`, with as many batches in flight as owners (each
owner has one batch in the pipeline at a time). It stays linear in the assignment because a range's memory is a sum
over its layers plus a term for its first layer and one for its last (where a cut splits a storage that two
neighbouring layers share), plus its largest workspace.

Solved with HiGHS through `scipy.optimize.milp` (exactly: relative gap 0). `brute_force_split` enumerates every
cut and order, for tests on small cases. `equal_split` gives each node the same number of layers (nodes in fleet
order); `balanced_split` is the paper's manual benchmark (footnote 5: each node takes consecutive layers up to a
1/N share of the total compute, trying not to exceed it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from msfusion_ray.costs.layers import LayerCost, part_flops, part_memory

Objective = Literal["time", "memory"]
GIB = 2**30


@dataclass(frozen=True)
class SplitProblem:
    costs: Sequence[LayerCost]  # every layer of the model, per batch
    middle: tuple[int, int]  # [first, end): the layers the compute nodes share
    seconds_per_flop: Sequence[float]  # per compute node: its compute time of one FLOP
    caps: Sequence[int]  # per compute node: memory cap in bytes
    owners: int  # K: copies of each part a node holds (and batches in flight)
    optimizer_state_copies: int

    @property
    def nodes(self) -> int:
        return len(self.caps)

    @property
    def layers(self) -> int:
        return self.middle[1] - self.middle[0]

    def memory(self, start: int, end: int) -> int:
        return part_memory(self.costs, start, end, self.optimizer_state_copies).total(self.owners, self.owners)

    def times(self, node: int, start: int, end: int) -> tuple[float, float]:
        forward, backward = part_flops(self.costs, start, end)
        return forward * self.seconds_per_flop[node], backward * self.seconds_per_flop[node]


@dataclass(frozen=True)
class Split:
    """Compute nodes in pipeline order, each with its layer range, per-batch stage times and memory."""

    order: tuple[int, ...]  # node indices (into the problem's nodes), first stage first
    ranges: tuple[tuple[int, int], ...]  # [start, end) layer range of each stage
    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    memory_bytes: tuple[int, ...]
    caps: tuple[int, ...]  # each stage's node's cap

    @property
    def pipe_full_s(self) -> float:
        """Max forward + max backward stage time: EdgeSys'25's procT^pipe-full, the objective."""
        return max(self.forward_s) + max(self.backward_s)

    @property
    def fits(self) -> bool:
        return all(m <= c for m, c in zip(self.memory_bytes, self.caps))

    @property
    def cuts(self) -> tuple[int, ...]:
        """First layer of each stage after the first."""
        return tuple(start for start, _ in self.ranges[1:])


def make_split(problem: SplitProblem, order: Sequence[int], ranges: Sequence[tuple[int, int]]) -> Split:
    times = [problem.times(node, a, b) for node, (a, b) in zip(order, ranges)]
    return Split(tuple(order), tuple(ranges), tuple(t[0] for t in times), tuple(t[1] for t in times),
                 tuple(problem.memory(a, b) for a, b in ranges), tuple(problem.caps[n] for n in order))


def _ranges(first: int, end: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    bounds = [first, *cuts, end]
    return list(zip(bounds, bounds[1:]))


def equal_split(problem: SplitProblem) -> Split:
    """The same number of layers per node (the first nodes take one more where it does not divide), in fleet
    order."""
    first, end = problem.middle
    sizes = [len(chunk) for chunk in np.array_split(np.arange(first, end), problem.nodes)]
    cuts = list(first + np.cumsum(sizes)[:-1])
    return make_split(problem, range(problem.nodes), _ranges(first, end, [int(c) for c in cuts]))


def balanced_split(problem: SplitProblem) -> Split:
    """EdgeSys'25's manual benchmark: target = total forward + backward FLOPs of the middle / N; each node in fleet
    order takes consecutive layers while their sum stays within the target (at least one, and leaving one for each
    node after it); the last node takes the rest."""
    first, end = problem.middle
    work = [c.forward_flops + c.backward_flops for c in problem.costs[first:end]]
    target = sum(work) / problem.nodes
    cuts, start = [], first
    for node in range(problem.nodes - 1):
        stop, total = start + 1, work[start - first]
        last_allowed = end - (problem.nodes - 1 - node)
        while stop < last_allowed and total + work[stop - first] <= target:
            total += work[stop - first]
            stop += 1
        cuts.append(stop)
        start = stop
    return make_split(problem, range(problem.nodes), _ranges(first, end, cuts))


def brute_force_split(problem: SplitProblem, objective: Objective = "time") -> Split | None:
    """Every cut and every order of the nodes; the best that fits (None: nothing fits). For small cases."""
    first, end = problem.middle
    best: Split | None = None
    score = (lambda split: split.pipe_full_s) if objective == "time" else (lambda split: max(split.memory_bytes))
    for cuts in itertools.combinations(range(first + 1, end), problem.nodes - 1):
        ranges = _ranges(first, end, cuts)
        for order in itertools.permutations(range(problem.nodes)):
            split = make_split(problem, order, ranges)
            if split.fits and (best is None or score(split) < score(best) * (1 - 1e-12)):
                best = split
    return best


def optimal_split(problem: SplitProblem, objective: Objective = "time", time_limit_s: float = 60.0) -> Split | None:
    """Solve the integer program; None when no assignment fits the nodes' memory. The objective is the paper's
    (`time`: max forward + max backward stage time) or the largest node's memory (`memory`)."""
    # scipy.optimize here, not at the top: importing it costs 0.3 CPU seconds, which every process that imports the
    # package's registries (each host and driver) paid, though only MP-SL's plan solves anything
    from scipy.optimize import Bounds, LinearConstraint, milp

    program = _Program(problem, objective)
    constraints = LinearConstraint(program.matrix, program.lower, program.upper)
    result = milp(program.objective, constraints=constraints, integrality=program.integrality,
                  bounds=Bounds(np.zeros(program.size), program.upper_bounds),
                  options={"mip_rel_gap": 0.0, "time_limit": time_limit_s})
    if result.x is None:
        return None
    return program.split(np.round(result.x).astype(int))


class _Program:
    """Variables: x[n, j] (node n holds middle layer j), s[n, j] (its range starts at j), e[n, j] (ends at j),
    W[n] (its workspace as a share of its cap), Lf, Lb (the slowest forward and backward stage), M (the largest
    node's memory in GiB)."""

    def __init__(self, problem: SplitProblem, objective: Objective = "time"):
        self.problem = problem
        n, s = problem.nodes, problem.layers
        self.size = 3 * n * s + n + 3
        self.lf, self.lb, self.m = self.size - 3, self.size - 2, self.size - 1
        rows: list[tuple[np.ndarray, float, float]] = []
        self._assignment_rows(rows)
        self._contiguity_rows(rows)
        self._memory_rows(rows)
        self._time_rows(rows)
        self.matrix = np.array([r[0] for r in rows])
        self.lower, self.upper = [r[1] for r in rows], [r[2] for r in rows]
        self.objective = np.zeros(self.size)
        if objective == "time":
            self.objective[[self.lf, self.lb]] = 1.0
        else:
            self.objective[self.m] = 1.0
        self.integrality = np.r_[np.ones(3 * n * s), np.zeros(n + 3)]
        self.upper_bounds = np.r_[np.ones(3 * n * s), np.full(n + 3, np.inf)]

    def x(self, node: int, layer: int) -> int:
        return node * self.problem.layers + layer

    def s(self, node: int, layer: int) -> int:
        return (self.problem.nodes + node) * self.problem.layers + layer

    def e(self, node: int, layer: int) -> int:
        return (2 * self.problem.nodes + node) * self.problem.layers + layer

    def w(self, node: int) -> int:
        return 3 * self.problem.nodes * self.problem.layers + node

    def _row(self, entries: dict[int, float]) -> np.ndarray:
        row = np.zeros(self.size)
        for index, value in entries.items():
            row[index] += value
        return row

    def _assignment_rows(self, rows: list) -> None:
        for j in range(self.problem.layers):  # each layer on exactly one node
            rows.append((self._row({self.x(n, j): 1 for n in range(self.problem.nodes)}), 1, 1))

    def _contiguity_rows(self, rows: list) -> None:
        layers = self.problem.layers
        for n in range(self.problem.nodes):
            rows.append((self._row({self.s(n, j): 1 for j in range(layers)}), 1, 1))  # one range, so >= 1 layer
            rows.append((self._row({self.e(n, j): 1 for j in range(layers)}), 1, 1))
            for j in range(layers):
                before = {self.x(n, j - 1): -1} if j > 0 else {}
                after = {self.x(n, j + 1): -1} if j + 1 < layers else {}
                rows.append((self._row({self.x(n, j): 1, **before, self.s(n, j): -1}), -np.inf, 0))
                rows.append((self._row({self.s(n, j): 1, self.x(n, j): -1}), -np.inf, 0))
                rows.append((self._row({self.x(n, j): 1, **after, self.e(n, j): -1}), -np.inf, 0))
                rows.append((self._row({self.e(n, j): 1, self.x(n, j): -1}), -np.inf, 0))
                if j > 0:
                    rows.append((self._row({self.s(n, j): 1, self.x(n, j - 1): 1}), -np.inf, 1))
                if j + 1 < layers:
                    rows.append((self._row({self.e(n, j): 1, self.x(n, j + 1): 1}), -np.inf, 1))

    def _memory_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per middle layer: bytes if held, extra if a range starts there, extra if it ends there, workspace."""
        problem = self.problem
        first, end = problem.middle
        k, copies = problem.owners, problem.optimizer_state_copies
        held, starts, ends, workspace = (np.zeros(problem.layers) for _ in range(4))
        for j, layer in enumerate(range(first, end)):
            cost, previous = problem.costs[layer], problem.costs[layer - 1] if layer > 0 else None
            shared = (previous.output_bytes if previous is not None and (previous.saves_output or cost.saves_input)
                      else 0)
            held[j] = (k * (cost.parameter_bytes + copies * cost.gradient_bytes + cost.inner_activation_bytes + shared)
                       + cost.gradient_bytes)
            starts[j] = k * ((cost.input_bytes if cost.saves_input else 0) - shared)
            ends[j] = k * (cost.output_bytes if cost.saves_output else 0)
            workspace[j] = cost.backward_workspace_bytes
        return held, starts, ends, workspace

    def _memory_rows(self, rows: list) -> None:
        """Per node: its memory within its cap, and M at least its memory (rows scaled to the cap and to GiB)."""
        held, starts, ends, workspace = self._memory_terms()
        for n, cap in enumerate(self.problem.caps):
            bytes_of = {self.w(n): float(cap)}
            for j in range(self.problem.layers):
                bytes_of[self.x(n, j)] = held[j]
                bytes_of[self.s(n, j)] = starts[j]
                bytes_of[self.e(n, j)] = ends[j]
                rows.append((self._row({self.w(n): -1, self.x(n, j): workspace[j] / cap}), -np.inf, 0))
            rows.append((self._row({k: v / cap for k, v in bytes_of.items()}), -np.inf, 1))
            rows.append((self._row({**{k: v / GIB for k, v in bytes_of.items()}, self.m: -1}), -np.inf, 0))

    def _time_rows(self, rows: list) -> None:
        problem = self.problem
        first, end = problem.middle
        for n in range(problem.nodes):
            for column, attribute in ((self.lf, "forward_flops"), (self.lb, "backward_flops")):
                entries = {self.x(n, j): getattr(problem.costs[layer], attribute) * problem.seconds_per_flop[n]
                           for j, layer in enumerate(range(first, end))}
                rows.append((self._row({**entries, column: -1}), -np.inf, 0))

    def split(self, solution: np.ndarray) -> Split:
        first = self.problem.middle[0]
        starts = []
        for n in range(self.problem.nodes):
            held = [j for j in range(self.problem.layers) if solution[self.x(n, j)]]
            starts.append((first + held[0], first + held[-1] + 1, n))
        starts.sort()
        return make_split(self.problem, [n for _, _, n in starts], [(a, b) for a, b, _ in starts])
