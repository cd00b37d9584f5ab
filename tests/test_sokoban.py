import itertools

import numpy as np
import pytest

from layerlab.laser.sokoban import env as sokoban


def play(level: sokoban.Level, actions) -> tuple[float, bool, sokoban.Batch]:
    """Total reward and whether the level ends solved, playing ``actions`` one by one."""
    b = sokoban.batch([level])
    row, total, solved = np.array([0]), 0.0, False
    for a in actions:
        r, won = sokoban.step(b, row, np.array([a]))
        total += float(r[0])
        solved = bool(won[0])
        if solved:
            break
    return total, solved, b


def brute_force_length(level: sokoban.Level, max_len: int) -> int | None:
    """Shortest solving action sequence by trying every sequence (tiny levels only)."""
    for n in range(max_len + 1):
        for seq in itertools.product(range(4), repeat=n):
            if n == 0:
                if set(level.boxes) == set(level.targets):
                    return 0
                continue
            if play(level, seq)[1]:
                return n
    return None


HAND_MADE = {
    # text: optimal number of actions (checked by brute force up to 5 actions)
    "#####\n#@$.#\n#####": 1,
    "######\n#@ $.#\n######": 2,
    "#######\n#.$ @ #\n#######": 2,                 # walk left, then push left
    "#####\n#.  #\n# $ #\n# @ #\n#####": 4,         # push up, walk around, push left
    "#######\n#.$ $.#\n#  @  #\n#######": 4,       # two boxes, pushed apart
    "#" * 14 + "\n#@$" + " " * 9 + ".#\n" + "#" * 14: 10,  # the box must travel 10 cells: a lower bound
}


@pytest.mark.parametrize("text,length", HAND_MADE.items())
def test_solver_is_optimal_on_hand_made_levels(text, length):
    level = sokoban.parse(text)
    sol = sokoban.solve(level)
    assert sol is not None and len(sol) == length
    assert play(level, sol)[1]
    if length <= 5:  # independent check: no shorter sequence exists
        assert brute_force_length(level, length) == length


def test_unsolvable_level_has_no_solution_and_is_deadlocked():
    level = sokoban.parse("#####\n#$ .#\n#  @#\n#####")  # box in a corner, off target
    assert sokoban.solve(level) is None
    b = sokoban.batch([level])
    assert sokoban.deadlocked(b, np.array([0]))[0]


def test_deadlock_check_flags_a_square_and_spares_a_live_box():
    square = sokoban.parse("#######\n#  .. #\n# $$  #\n# $$@ #\n#  .. #\n#######")
    live = sokoban.parse("#######\n#  .. #\n#  $$ #\n# $ $@#\n#  .. #\n#######")
    b = sokoban.batch([square, live])
    dead = sokoban.deadlocked(b, np.array([0, 1]))
    assert dead.tolist() == [True, False]
    assert sokoban.solve(live) is not None


def test_rewards_follow_gym_sokoban():
    level = sokoban.parse("########\n#@$. $.#\n########")
    b = sokoban.batch([level])
    row = np.array([0])
    r, won = sokoban.step(b, row, np.array([3]))          # push box onto target
    assert r[0] == pytest.approx(-0.1 + 1) and not won[0]
    r, _ = sokoban.step(b, row, np.array([3]))            # push it off again
    assert r[0] == pytest.approx(-0.1 - 1)
    r, _ = sokoban.step(b, row, np.array([0]))            # bump into a wall: no move, step penalty
    assert r[0] == pytest.approx(-0.1) and b.player[0] == 11
    level = sokoban.parse("#####\n#@$.#\n#####")
    total, solved, _ = play(level, [3])
    assert solved and total == pytest.approx(-0.1 + 1 + 10)


def test_push_is_blocked_by_a_second_box():
    level = sokoban.parse("#######\n#@$$..#\n#######")
    b = sokoban.batch([level])
    sokoban.step(b, np.array([0]), np.array([3]))
    assert b.player[0] == 8 and np.flatnonzero(b.boxes[0]).tolist() == [9, 10]


@pytest.mark.parametrize("n_boxes", [1, 2, 3])
def test_generated_levels_are_solved_by_their_recorded_solution(n_boxes):
    for optimal in (True, False):
        levels = sokoban.generate(3, "train", 12, n_boxes=n_boxes, optimal=optimal, tries=2, reverse_steps=60)
        for lv in levels:
            assert len(lv.boxes) == len(lv.targets) == n_boxes
            assert not set(lv.boxes) & set(lv.targets)  # no box starts on a target
            assert lv.walls[[0, -1], :].all() and lv.walls[:, [0, -1]].all()
            assert play(lv, lv.solution)[1], lv.text()
            assert lv.optimal == optimal
            if optimal:
                assert len(lv.solution) == len(sokoban.solve(lv))


def test_same_seed_same_levels_and_splits_differ():
    a = sokoban.generate(5, "val", 6, reverse_steps=60)
    b = sokoban.generate(5, "val", 6, reverse_steps=60)
    assert [x.text() for x in a] == [y.text() for y in b]
    assert [x.solution for x in a] == [y.solution for y in b]
    longer = sokoban.generate(5, "val", 3, start=3, reverse_steps=60)  # level i depends only on (seed, split, i)
    assert [x.text() for x in a[3:]] == [y.text() for y in longer]
    other = sokoban.generate(5, "test", 6, reverse_steps=60)
    assert {x.text() for x in a}.isdisjoint(y.text() for y in other)
    with pytest.raises(ValueError, match="split"):
        sokoban.generate(5, "dev", 1)


def test_parse_and_text_round_trip():
    text = "######\n#+ * #\n# $. #\n######"
    assert sokoban.parse(text).text() == text


def test_observation_planes():
    level = sokoban.parse("#####\n#@$.#\n#####")
    b = sokoban.batch([level])
    obs = sokoban.observe(b, egocentric=False)
    assert obs.shape == (1, 4 * 15) == (1, sokoban.observation_size((3, 5), egocentric=False))
    planes = obs.reshape(4, 15)
    assert planes[0].sum() == 12 and planes[1, 8] == 1 and planes[2, 7] == 1 and planes[3, 6] == 1
    ego = sokoban.observe(b).reshape(3, 5, 9)  # a 5 x 9 window centred on the player (row 2, column 4)
    assert sokoban.observation_size((3, 5)) == ego.size
    assert ego[0, 2, 4:7].sum() == 0 and ego[0].sum() == 5 * 9 - 3  # floor at the centre and to the right
    assert ego[2, 2, 5] == 1 and ego[1, 2, 6] == 1  # box one cell right, target two cells right
    sokoban.step(b, np.array([0]), np.array([3]))  # push: the view moves with the player
    ego = sokoban.observe(b).reshape(3, 5, 9)
    assert ego[2, 2, 5] == 1 and ego[1, 2, 5] == 1 and ego[0, 2, 3] == 0
