"""A seeded Sokoban: level generator, move-optimal solver, batched rules, deadlock check.

Rules and rewards follow gym-sokoban (Schrader 2018), with its four "push" actions
(0 up, 1 down, 2 left, 3 right: move, or push the box in front if the cell behind it is
free): -0.1 per step, +1 when a box lands on a target, -1 when one leaves a target, +10
when every box is on a target (the episode then ends).

Levels are generated as gym-sokoban does: a room carved by a random walk of small masks,
targets and the player placed on floor cells, boxes starting on the targets, then
reverse play (the player walks and pulls boxes) from the solved room. gym-sokoban keeps
the best-scoring state of a depth-first search over up to 300,000 reverse-play states
(seconds per level); here the best state of ``tries`` random reverse plays of
``reverse_steps`` moves is kept, with gym's effective score (pulls x total box
displacement, 0 while any box is on a target), so no box starts on a target. Reverse play makes every level solvable; its reversed moves are a
(non-optimal) solution, and ``solve`` finds a move-optimal one by breadth-first search.
Level i of a split depends only on (seed, split, i), so a longer list extends a shorter.

Cells are flat indices r * width + c of a [height, width] grid whose border is wall.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

ACTIONS = ("up", "down", "left", "right")
STEP_PENALTY, BOX_ON, BOX_OFF, FINISHED = -0.1, 1.0, -1.0, 10.0
SPLITS = {"train": 0, "val": 1, "test": 2}
_MASKS = [np.array(m, bool) for m in (  # gym-sokoban's room-carving masks
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]], [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
    [[0, 0, 0], [1, 1, 0], [1, 1, 0]], [[0, 0, 0], [0, 1, 1], [0, 1, 0]])]
_DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(eq=False)
class Level:
    """One level. walls: [height, width] bool; targets, boxes: sorted cell indices;
    solution: action indices that solve it (move-optimal when ``optimal``)."""

    walls: np.ndarray
    targets: tuple[int, ...]
    boxes: tuple[int, ...]
    player: int
    solution: tuple[int, ...] = ()
    optimal: bool = False
    dead: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.dead = dead_cells(self.walls, self.targets)

    @property
    def width(self) -> int:
        return self.walls.shape[1]

    def offsets(self) -> tuple[int, ...]:
        """Flat-index offset of each action."""
        return tuple(dr * self.width + dc for dr, dc in _DIRS)

    def text(self) -> str:
        """The level in the usual XSB notation (# wall, $ box, . target, * box on target, @ player)."""
        chars = np.where(self.walls.reshape(-1), "#", " ").astype(object)
        chars[list(self.targets)] = "."
        for b in self.boxes:
            chars[b] = "*" if b in self.targets else "$"
        chars[self.player] = "+" if self.player in self.targets else "@"
        h, w = self.walls.shape
        return "\n".join("".join(chars[r * w:(r + 1) * w]) for r in range(h))


def parse(text: str) -> Level:
    """A level from XSB notation (rows padded with wall to the widest row)."""
    rows = text.strip("\n").split("\n")
    w = max(len(r) for r in rows)
    grid = [r.ljust(w, "#") for r in rows]
    flat = "".join(grid)
    walls = np.array([ch == "#" for ch in flat]).reshape(len(grid), w)
    cells = lambda chars: tuple(i for i, ch in enumerate(flat) if ch in chars)  # noqa: E731
    return Level(walls, cells(".*+"), cells("$*"), cells("@+")[0])


def dead_cells(walls: np.ndarray, targets) -> np.ndarray:
    """[height, width] bool: floor cells from which a lone box can reach no target
    (found by pulling a box away from every target). A box there is a deadlock."""
    h, w = walls.shape
    flat_walls = walls.reshape(-1)
    live = np.zeros(h * w, bool)
    todo = deque(targets)
    live[list(targets)] = True
    while todo:
        c = todo.popleft()
        for dr, dc in _DIRS:  # pull the box from c to c+d: the player stands at c+d, moves to c+2d
            d = dr * w + dc
            a, b = c + d, c + 2 * d
            if 0 <= b < h * w and not flat_walls[a] and not flat_walls[b] and not live[a]:
                live[a] = True
                todo.append(a)
    return (~live & ~flat_walls).reshape(h, w)


def solve(level: Level, max_states: int = 3_000_000) -> tuple[int, ...] | None:
    """A move-optimal solution (fewest actions) by breadth-first search over (player,
    boxes), pruning dead-cell pushes (which never lose a solution). None if unsolvable
    or more than ``max_states`` states would be visited."""
    walls = level.walls.reshape(-1).tolist()
    dead = level.dead.reshape(-1).tolist()
    offs = level.offsets()
    shift = len(walls).bit_length()
    goal = sum(1 << t for t in level.targets)
    start = (sum(1 << b for b in level.boxes) << shift) | level.player
    parent = {start: (-1, -1)}
    frontier = [start]
    pmask = (1 << shift) - 1
    while frontier:
        nxt = []
        for key in frontier:
            boxes, p = key >> shift, key & pmask
            if boxes == goal:
                path = []
                while parent[key][0] >= 0:
                    key, a = parent[key]
                    path.append(a)
                return tuple(reversed(path))
            for a, off in enumerate(offs):
                n = p + off
                if walls[n]:
                    continue
                nb = boxes
                if boxes >> n & 1:
                    b = n + off
                    if walls[b] or boxes >> b & 1 or dead[b]:
                        continue
                    nb = boxes ^ (1 << n) ^ (1 << b)
                k = (nb << shift) | n
                if k not in parent:
                    parent[k] = (key, a)
                    nxt.append(k)
            if len(parent) > max_states:
                return None
        frontier = nxt
    return None


def _room(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size] bool floor mask carved by gym-sokoban's random walk of masks."""
    floor = np.zeros((size, size), bool)
    pos = rng.integers(1, size - 1, 2)
    d = np.array(_DIRS[rng.integers(4)])
    for _ in range(int(1.7 * (size + size))):  # gym passes num_gen_steps here
        if rng.random() < 0.35:
            d = np.array(_DIRS[rng.integers(4)])
        pos = np.clip(pos + d, 1, size - 2)
        floor[pos[0] - 1:pos[0] + 2, pos[1] - 1:pos[1] + 2] |= _MASKS[rng.integers(len(_MASKS))]
    floor[[0, -1], :] = floor[:, [0, -1]] = False
    return floor


def _reverse_play(walls: np.ndarray, targets: list[int], player: int, rng, steps: int):
    """Random reverse play from the solved room; returns (score, boxes, player, moves)
    of the best-scoring state seen. The score is what gym-sokoban's search maximises in
    effect: pulls x total box displacement, 0 while any box is on a target."""
    w = walls.shape[1]
    flat = walls.reshape(-1)
    boxes = list(targets)  # box i started on target i
    best = (0, tuple(boxes), player, 0)
    moves, pulls = [], 0
    for _ in range(4 * steps):  # attempts; blocked ones do not count as moves
        if len(moves) == steps:
            break
        a = int(rng.integers(8))  # 0-3 walk and pull the box behind, 4-7 walk only (gym's)
        dr, dc = _DIRS[a % 4]
        d = dr * w + dc
        n, behind = player + d, player - d
        if flat[n] or n in boxes:
            continue
        if a < 4 and behind in boxes:
            boxes[boxes.index(behind)] = player
            pulls += 1
        player = n
        moves.append(a % 4)
        if pulls and not set(boxes) & set(targets):
            disp = sum(abs(b // w - t // w) + abs(b % w - t % w) for b, t in zip(boxes, targets))
            if pulls * disp > best[0]:
                best = (pulls * disp, tuple(boxes), player, len(moves))
    return best[0], best[1], best[2], moves[:best[3]]


def generate_one(rng: np.random.Generator, size: int = 10, n_boxes: int = 3, tries: int = 4,
                 reverse_steps: int | None = None, optimal: bool = True) -> Level:
    """One level (see module docstring). ``optimal``: solve it by BFS (else the recorded
    solution is the reversed reverse play)."""
    steps = reverse_steps or int(1.7 * (size + size))
    while True:
        floor = _room(rng, size)
        cells = np.flatnonzero(floor)
        if len(cells) < n_boxes + 2:
            continue
        walls = ~floor
        pick = rng.choice(cells, n_boxes + 1, replace=False)
        targets, start = sorted(int(c) for c in pick[:n_boxes]), int(pick[-1])
        best = max((_reverse_play(walls, targets, start, rng, steps) for _ in range(tries)), key=lambda b: b[0])
        score, boxes, player, moves = best
        if score == 0:
            continue
        reverse = {0: 1, 1: 0, 2: 3, 3: 2}
        level = Level(walls, tuple(targets), tuple(sorted(boxes)), player,
                      tuple(reverse[m] for m in reversed(moves)))
        if optimal:
            sol = solve(level)
            if sol is None:  # only past the state limit; the level is still solvable, but skip it
                continue
            level.solution, level.optimal = sol, True
        return level


def generate(seed: int, split: str, n: int, start: int = 0, **kwargs) -> list[Level]:
    """Levels start..start+n-1 of ``split`` (train | val | test) for ``seed``; keyword
    arguments go to ``generate_one``. Level i depends only on (seed, split, i)."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return [generate_one(np.random.default_rng([seed, SPLITS[split], i]), **kwargs) for i in range(start, start + n)]


# ---------------------------------------------------------------------------- batched play

@dataclass
class Batch:
    """N levels played together. walls, targets, dead: [N, cells] bool; boxes: [N,
    cells] bool (changes); player: [N] int; n_boxes: [N] int."""

    walls: np.ndarray
    targets: np.ndarray
    dead: np.ndarray
    boxes: np.ndarray
    player: np.ndarray
    shape: tuple[int, int]


def batch(levels: list[Level]) -> Batch:
    """The start states of ``levels`` (all of one grid shape)."""
    shape = levels[0].walls.shape
    if any(lv.walls.shape != shape for lv in levels):
        raise ValueError("batch: every level must have the same grid shape")
    n, c = len(levels), shape[0] * shape[1]
    targets, boxes = np.zeros((n, c), bool), np.zeros((n, c), bool)
    for i, lv in enumerate(levels):
        targets[i, list(lv.targets)] = True
        boxes[i, list(lv.boxes)] = True
    return Batch(np.stack([lv.walls.reshape(-1) for lv in levels]), targets,
                 np.stack([lv.dead.reshape(-1) for lv in levels]), boxes,
                 np.array([lv.player for lv in levels]), shape)


def observe(b: Batch, rows: np.ndarray | None = None, egocentric: bool = True) -> np.ndarray:
    """Observations as float32 one-hot planes. Egocentric (default): wall, target and box
    planes of a (2h - 1) x (2w - 1) window centred on the player (outside the grid counts
    as wall), [n, 3 * (2h - 1) * (2w - 1)]; else wall, target, box and player planes of
    the grid, [n, 4 * cells]."""
    rows = np.arange(len(b.player)) if rows is None else rows
    h, w = b.shape
    if not egocentric:
        player = np.zeros((len(rows), h * w), bool)
        player[np.arange(len(rows)), b.player[rows]] = True
        return np.concatenate([b.walls[rows], b.targets[rows], b.boxes[rows], player], 1).astype(np.float32)
    planes = np.stack([b.walls[rows], b.targets[rows], b.boxes[rows]], 1).reshape(len(rows), 3, h, w)
    padded = np.zeros((len(rows), 3, 3 * h - 2, 3 * w - 2), bool)
    padded[:, 0] = True
    padded[:, :, h - 1:2 * h - 1, w - 1:2 * w - 1] = planes
    r, c = np.divmod(b.player[rows], w)
    ri = (r[:, None] + np.arange(2 * h - 1))[:, None, :, None]
    ci = (c[:, None] + np.arange(2 * w - 1))[:, None, None, :]
    view = padded[np.arange(len(rows))[:, None, None, None], np.arange(3)[None, :, None, None], ri, ci]
    return view.reshape(len(rows), -1).astype(np.float32)


def observation_size(shape: tuple[int, int], egocentric: bool = True) -> int:
    h, w = shape
    return 3 * (2 * h - 1) * (2 * w - 1) if egocentric else 4 * h * w


def step(b: Batch, rows: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``actions`` [n] to levels ``rows`` [n] in place. Returns (rewards [n],
    solved [n] bool) under gym-sokoban's rules."""
    w = b.shape[1]
    offs = np.array([dr * w + dc for dr, dc in _DIRS])[actions]
    p = b.player[rows]
    n = p + offs
    beyond = np.clip(n + offs, 0, b.walls.shape[1] - 1)
    box_n = b.boxes[rows, n]
    push = box_n & ~b.walls[rows, beyond] & ~b.boxes[rows, beyond]
    move = ~b.walls[rows, n] & (~box_n | push)
    before = (b.boxes[rows] & b.targets[rows]).sum(1)
    b.boxes[rows[push], n[push]] = False
    b.boxes[rows[push], beyond[push]] = True
    b.player[rows[move]] = n[move]
    after = (b.boxes[rows] & b.targets[rows]).sum(1)
    solved = ~(b.boxes[rows] & ~b.targets[rows]).any(1)
    reward = STEP_PENALTY + BOX_ON * (after > before) + BOX_OFF * (after < before) + FINISHED * solved
    return reward, solved


def deadlocked(b: Batch, rows: np.ndarray) -> np.ndarray:
    """[n] bool: a box off target sits on a dead cell, or in a 2x2 square of walls and
    boxes (no box there can ever move). Sound: a flagged level cannot be solved."""
    loose = b.boxes[rows] & ~b.targets[rows]
    if not len(rows):
        return np.zeros(0, bool)
    on_dead = (loose & b.dead[rows]).any(1)
    h, w = b.shape
    blocked = (b.walls[rows] | b.boxes[rows]).reshape(-1, h, w)
    lo = loose.reshape(-1, h, w)
    corners = (slice(None, -1), slice(1, None))
    square = np.ones_like(blocked[:, :-1, :-1])
    has_loose = np.zeros_like(square)
    for r in corners:
        for c in corners:
            square &= blocked[:, r, c]
            has_loose |= lo[:, r, c]
    return on_dead | (square & has_loose).any((1, 2))
