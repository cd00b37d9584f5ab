"""LASER claim verdicts from intervals, on constructed result stores (no model runs)."""

import numpy as np
import pandas as pd
import pytest

from layerlab.laser import sweep as laser, claims as laser_claims
from layerlab.core.io import results
from layerlab.core.evidence import verdicts

N_VAL, N_TEST = 20, 80
PROTO = "val20-test80-seed0-n100-limit100"


def put_point(store, reductions, val_right, test_right, protocol=PROTO, model="m", dataset="counterfact",
              runtime="float32/cpu", n_val=N_VAL, n_test=N_TEST, nll_shift=0.0):
    """Store one point like ``laser.Sweeper.point`` does: ``val_right``/``test_right`` are
    how many of the first items of each split the point gets right; the answer's nll is
    1 - 0.5 correct + ``nll_shift``."""
    splits = np.array(["val"] * n_val + ["test"] * n_test, dtype=object)
    correct = np.r_[np.arange(n_val) < val_right, np.arange(n_test) < test_right].astype(float)
    per_item = pd.DataFrame({"item": [f"i{j:04d}" for j in range(n_val + n_test)], "correct": correct,
                             "nll": 1.0 - 0.5 * correct + nll_shift})
    one = reductions[0] if len(reductions) == 1 else None
    describe = {"model": model, "technique": "laser", "dataset": dataset, "protocol": protocol, "runtime": runtime,
                "matrix_type": one[0] if one else ("base" if not reductions else "composed"),
                "layer": one[1] if one else -1, "rho": one[2] if one else 1.0, "part": "top",
                "n_reductions": len(reductions), "reductions": ";".join(f"{t}@{l}:{r}" for t, l, r in reductions)}
    key = results.point_key(model, "laser", [list(r) for r in reductions], dataset, protocol, {"rt": runtime})
    store.put("laser_items", key, per_item.assign(model=model, technique="laser_items", dataset=dataset,
                                                  split=splits, metric="item", value=correct, n_items=1))
    store.put("laser", key, laser.summarise(per_item, splits, describe))


def by_claim(store, words):
    return [r for r in laser_claims.claim_rows(store) if words in r["claim"]]


def sweep(store, chosen_val, chosen_test, where=("mlp_in", 3, 0.01), others=(("q", 0, 0.01, 8, 35),
          ("mlp_in", 1, 0.01, 8, 36)), **kw):
    """Base (10 val, 40 test right), a worse late MLP point, ``others`` (type, layer, rho,
    val, test) and the chosen point on a 4-layer model."""
    put_point(store, [], 10, 40, **kw)
    put_point(store, [("mlp_out", 3, 0.5)], 9, 38, **kw)   # a worse point; layer 3 makes 4 layers
    for t, layer, rho, v, te in others:
        put_point(store, [(t, layer, rho)], v, te, **kw)
    put_point(store, [where], chosen_val, chosen_test, **kw)


def test_a_transferring_late_mlp_gain_agrees(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70)
    (gain,) = by_claim(store, "single rank reduction")
    assert verdicts.word(gain["verdict"]) == verdicts.AGREES and "GPT-J" in gain["paper's number"]
    assert "mlp_in [fc_up; U_in if the MLP has no gate], layer 3 of 4" in gain["ours"]
    (late,) = by_claim(store, "late-layer MLP")
    assert late["verdict"] == verdicts.AGREES and "97.5% interval" in late["interval"]
    assert late["interval"] != gain["interval"]  # its own comparisons, not claim (a)'s interval


def test_a_best_in_an_early_attention_matrix_disagrees_on_location(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70, where=("q", 0, 0.01), others=(("mlp_in", 1, 0.01, 8, 36),))
    (late,) = by_claim(store, "late-layer MLP")
    assert late["verdict"] == verdicts.DISAGREES and "q [W_q]" in late["ours"]


def test_location_halves_the_grid_leaves_out_are_not_run(tmp_path):
    quick = results.ResultStore(tmp_path / "quick")  # MLP types only: the MLP half is forced
    sweep(quick, 16, 70, others=(("mlp_in", 1, 0.01, 8, 36),))
    (late,) = by_claim(quick, "late-layer MLP")
    assert late["verdict"].startswith(f"{verdicts.NOT_RUN}: MLP half: only MLP matrices were swept")
    smoke = results.ResultStore(tmp_path / "smoke")  # late MLP layers only: both halves forced
    sweep(smoke, 16, 70, others=())
    (late,) = by_claim(smoke, "late-layer MLP")
    assert late["verdict"].startswith(f"{verdicts.NOT_RUN}: MLP half")
    assert "late half: only deeper-half layers were swept" in late["interval"]


def test_location_can_be_inconclusive(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 42, others=(("q", 0, 0.01, 12, 41), ("mlp_in", 1, 0.01, 11, 41)))
    (late,) = by_claim(store, "late-layer MLP")
    assert late["verdict"] == verdicts.INCONCLUSIVE


def test_no_reduction_chosen_on_validation_is_not_testable(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 10, 70)  # ties the base on validation: the unmodified model wins the tie
    (gain,) = by_claim(store, "single rank reduction")
    assert gain["verdict"] == (f"{verdicts.NOT_TESTABLE}: grid cannot falsify: "
                               "no reduction beats the unmodified model on validation")
    for words in ("late-layer MLP", "greedy", "loss of the answer"):
        (row,) = by_claim(store, words)
        assert row["verdict"].startswith(verdicts.NOT_TESTABLE)


def test_a_gain_that_does_not_transfer_is_inconclusive(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 41)
    (gain,) = by_claim(store, "single rank reduction")
    assert verdicts.word(gain["verdict"]) == verdicts.INCONCLUSIVE


def test_four_items_gained_none_lost_is_not_a_gain(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 44)  # 40 -> 44 of 80: exact McNemar p = 0.125
    (gain,) = by_claim(store, "single rank reduction")
    assert verdicts.word(gain["verdict"]) == verdicts.INCONCLUSIVE


@pytest.mark.parametrize("composed_test, verdict", [(78, verdicts.AGREES), (70, verdicts.INCONCLUSIVE),
                                                    (60, verdicts.DISAGREES)])
def test_greedy_is_judged_against_the_best_single_reduction(tmp_path, composed_test, verdict):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70)
    put_point(store, [("mlp_in", 3, 0.01), ("mlp_in", 2, 0.1)], 18, composed_test)
    put_point(store, [("mlp_in", 3, 0.01), ("mlp_in", 2, 0.1), ("mlp_out", 1, 0.1)], 17, 80)  # worse on val
    (greedy,) = by_claim(store, "greedy")
    assert verdicts.word(greedy["verdict"]) == verdict and "chosen on validation" in greedy["ours"]
    assert "direction only" in greedy["verdict"] and greedy["n"] == 80
    assert "best single 87.5%" in greedy["ours"] and "2 reductions" in greedy["ours"]


def test_greedy_row_is_always_emitted(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70)
    (greedy,) = by_claim(store, "greedy")
    assert greedy["verdict"] == f"{verdicts.NOT_TESTABLE}: grid cannot falsify: greedy kept one reduction or none (no composition stored)"


@pytest.mark.parametrize("attention, verdict", [((500, 500), verdicts.AGREES), ((500, 300), verdicts.DISAGREES),
                                                ((500, 445), verdicts.INCONCLUSIVE)])
def test_attention_reduces_with_little_harm_or_gain(tmp_path, attention, verdict):
    store = results.ResultStore(tmp_path)
    kw = dict(n_val=250, n_test=1000)
    put_point(store, [], 100, 500, **kw)
    put_point(store, [("mlp_in", 3, 0.01)], 130, 600, **kw)
    put_point(store, [("q", 1, 0.01)], 100, attention[0], **kw)
    put_point(store, [("k", 2, 0.01)], 100, attention[1], **kw)
    put_point(store, [("k", 2, 0.5)], 100, 100, **kw)  # not the heaviest reduction: not judged
    (row,) = by_claim(store, "attention matrices")
    assert verdicts.word(row["verdict"]) == verdict and "Holm" in row["interval"]
    assert row["verdict"].startswith(f"{verdict}: ") and "points" in row["verdict"] and row["n"] == 1000


def test_attention_claim_is_not_run_without_attention_points(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70, others=())
    (row,) = by_claim(store, "attention matrices")
    assert row["verdict"].startswith(f"{verdicts.NOT_RUN}: no attention matrix was swept (this grid: mlp_in")


@pytest.mark.parametrize("shift, verdict", [(0.6, verdicts.AGREES), (0.0, verdicts.DISAGREES)])
def test_accuracy_can_rise_while_the_answer_loss_worsens(tmp_path, shift, verdict):
    store = results.ResultStore(tmp_path)
    put_point(store, [], 10, 40)
    put_point(store, [("mlp_in", 3, 0.01)], 16, 70, nll_shift=shift)
    (row,) = by_claim(store, "loss of the answer")
    assert row["verdict"] == verdict and "paired t" in row["interval"]


def test_protocols_are_never_mixed(tmp_path):
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70)
    sweep(store, 10, 40, protocol=PROTO.replace("seed0", "seed1"))
    table = store.table("laser")
    with pytest.raises(ValueError, match="mixes protocols"):
        laser.select_best(table)
    gains = by_claim(store, "single rank reduction")
    assert len(gains) == 2 and {g["verdict"].split(':')[0] for g in gains} == {verdicts.AGREES, verdicts.NOT_TESTABLE}
    assert sorted(g["counted"] for g in gains) == [False, True]  # one protocol counted per claim
    assert all("seed" in g["model"] for g in gains)
    # a dtype is a protocol too
    store2 = results.ResultStore(tmp_path / "b")
    sweep(store2, 16, 70)
    sweep(store2, 16, 70, runtime="bfloat16/cuda")
    assert len(by_claim(store2, "single rank reduction")) == 2


def test_sweeper_rows_carry_their_protocol(tmp_path):
    from layerlab.laser import rank
    from tiny import CharTokenizer, facts_file, tiny_model

    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(tiny_model("llama"), CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"))
    row = sweeper.point([rank.Reduction("mlp_in", 3, 0.5)]).iloc[0]
    assert row.runtime == "float32/cpu" and len(row.runtime_id) == 8 and row.protocol == sweeper.split_spec


def test_fever_gets_only_the_gain_row_and_an_empty_store_none(tmp_path):
    assert laser_claims.claim_rows(results.ResultStore(tmp_path / "empty")) == []
    store = results.ResultStore(tmp_path)
    sweep(store, 16, 70, dataset="fever")
    rows = laser_claims.claim_rows(store)
    assert [r["claim"] for r in rows] == ["a single rank reduction raises fever test accuracy"]
    assert set(rows[0]) == set(laser_claims.COLUMNS) | {"counted", "n", "statistic", "mde", "n_needed", "secondary"}


def test_paper_names():
    assert laser_claims.paper_name("gate") == "gate [U_in]"
    assert laser_claims.paper_name("mlp_in") == "mlp_in [fc_up]"
    assert laser_claims.paper_name("mlp_in", gated=False) == "mlp_in [U_in]"
    assert laser_claims.paper_name("mlp_out", gated=False) == "mlp_out [U_out]"



def test_the_quick_grid_can_falsify_the_location_and_attention_claims():
    from layerlab.laser import sweep as laser_sweep

    cfg = laser_sweep.profile_config("quick", 30, ("q", "k", "v", "o", "gate", "mlp_in", "mlp_out"))
    assert min(cfg["layers"]) < 15 <= max(cfg["layers"]) and 29 in cfg["layers"]
    assert set(cfg["matrix_types"]) & {"q", "k", "v", "o"} and set(cfg["matrix_types"]) & {"mlp_in", "mlp_out"}


def test_the_gain_row_shows_the_answer_loglikelihood_beside_accuracy_and_never_judges_on_it(tmp_path):
    # same accuracies, opposite nll changes: the verdict (accuracy, the primary) cannot move,
    # the secondary statistic flips sign with the nll
    words = {}
    for shift in (-0.3, 0.3):
        store = results.ResultStore(tmp_path / str(shift))
        sweep(store, 16, 70)
        put_point(store, [("mlp_in", 3, 0.01)], 16, 70, nll_shift=shift)  # the chosen point, nll shifted
        (gain,) = by_claim(store, "single rank reduction")
        words[shift] = gain["verdict"]
        assert gain["secondary"].startswith("answer log-likelihood per token: Δ " + ("+" if shift < 0 else "-"))
        assert "paired t, z" in gain["secondary"] and "not judged" in gain["secondary"]
    assert words[-0.3] == words[0.3]
