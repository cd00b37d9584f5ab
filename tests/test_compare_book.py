import nbformat
import numpy as np
import pandas as pd
import pytest

from layerlab.book import build as book, compare
from layerlab.core.io import results
from layerlab.core.evidence import verdicts


def _store_with_results(tmp_path):
    store = results.ResultStore(tmp_path)
    base = dict(model="m", technique="laser", dataset="counterfact", protocol="p", part="top", reductions="")
    # base 10% and a mlp_in@3 reduction at 30%, on a 4-layer model; per-item rows for the paired difference
    # and a greedy composition of two reductions at 40%
    for key, (tau, layer, rho, acc) in {"kb": ("base", -1, 1.0, 0.1), "kr": ("mlp_in", 3, 0.01, 0.3),
                                        "kq": ("q", 0, 0.5, 0.05), "kg": ("mlp_in", 2, 0.01, 0.4)}.items():
        n_red = {"kb": 0, "kg": 2}.get(key, 1)
        rows = [dict(base, split=s, metric="acc", value=acc, n_items=n, ci_low=0, ci_high=1, matrix_type=tau,
                     layer=layer, rho=rho, n_reductions=n_red) for s, n in (("val", 20), ("test", 80))]
        rows += [dict(r, metric="nll", value=3.0) for r in rows]
        store.put("laser", key, rows)
        correct = ((np.arange(100) % 20) < acc * 20).astype(float)  # the same rate in val and test
        store.put("laser_items", key, pd.DataFrame({"item": [f"{i:03d}" for i in range(100)], "correct": correct,
                                                    "split": ["val"] * 20 + ["test"] * 80}).assign(
            model="m", technique="laser_items", dataset="counterfact", metric="item", value=correct, n_items=1))
    dist = [dict(model="m", technique="prune_distance", dataset="c4", split="validation", metric="angular_distance",
                 value=0.1 * (4 - layer) + n, n_items=8, n=n, layer=layer) for n in range(1, 5) for layer in range(0, 5 - n)]
    store.put("prune_distance", "d", dist)
    sens = [dict(model="m", technique="painters_layer", dataset="wikitext2", split="test", metric="delta_loss_norm",
                 value=0.01 * layer, n_items=100, layer=layer, variant=v) for layer in range(4) for v in ("skip", "swap_next")]
    store.put("painters_layer", "s", sens)
    return store


def test_atlas_puts_every_lens_on_one_layer_axis(tmp_path):
    frame = compare.atlas(_store_with_results(tmp_path), "m")
    lenses = frame.groupby("lens")["layer"].apply(sorted).to_dict()
    assert set(lenses) == {"laser_gain", "angular_distance", "skip_cost", "swap_cost"}
    gain = frame[frame.lens == "laser_gain"].set_index("layer")["value"]
    assert gain[3] == pytest.approx(20.0)  # 30% vs 10% on validation
    assert gain[0] == pytest.approx(-5.0)
    assert compare.atlas_correlations(frame).shape == (4, 4)


def test_claims_report_the_paired_difference_and_a_verdict(tmp_path):
    table = compare.claims(_store_with_results(tmp_path))
    row = table[table.claim.str.contains("counterfact")].iloc[0]
    assert "10.0% → 30.0%" in row["ours"] and verdicts.word(row["verdict"]) == "agrees"
    assert "+20.0 pp" in row["interval"]
    late = table[table.claim.str.contains("late-layer MLP")].iloc[0]
    assert late["verdict"] == "agrees"
    deep = table[table.claim.str.contains("deep end")].iloc[0]
    # l*(n) = 4 - n: both block sizes sit at the deep end; means over documents cannot be resampled
    assert "2 of 2" in deep["ours"] and deep["verdict"].startswith("not testable: no data: the distances are stored as means")
    greedy = table[table.claim.str.contains("composing")].iloc[0]  # judged against the best single reduction
    assert "best single 30.0% → composed 40.0% (2 reductions" in greedy["ours"] and greedy["verdict"].startswith("agrees: direction only")
    assert "+10.0 pp" in greedy["interval"]
    printed = compare.shown(table)  # the page's table: blanks where a row has no n or n_needed
    assert table["n_needed"].isna().any() and not printed.isna().any().any()
    assert (printed.loc[table["n_needed"].isna(), "n_needed"] == "").all()


def test_deep_end_share_counts_blocks_whose_centre_is_in_the_deeper_half():
    from layerlab.prune import blocks as prune
    deep = pd.DataFrame({"n": [1, 2, 3, 4, 6], "l*": [8, 7, 0, 6, 0]})  # 10 layers; n = 6 > 10 // 2 is left out
    assert prune.deep_end_share(deep, 10) == pytest.approx(3 / 4)  # centres 8.5, 8, 1.5, 8
    shallow = pd.DataFrame({"n": [1, 2], "l*": [0, 1]})
    assert prune.deep_end_share(shallow, 10) == 0.0


def test_toc_lists_the_profiles_executed_notebooks():
    toc = book.toc("smoke")
    assert "book/executed/laser-smollm2-135m" in toc and "gemma3" not in toc
    assert "book/executed/prune-qwen2_5-coder-1_5b" in book.toc("quick")  # dots never reach a docname
    assert "book/executed/laser_sokoban-sokoban-dt" in book.toc("quick") and "prune-gemma3" not in book.toc("quick")
    with open(book.ROOT / "_toc.yml") as f:
        committed = f.read()
    assert book.toc("quick") in committed  # the committed TOC is the quick profile's


def test_a_failing_notebook_stops_the_build_and_names_the_cell(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("model = 'x'\nprofile = 'smoke'\nresults_dir = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1\nraise ValueError('broken on purpose')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "laser.ipynb")
    monkeypatch.setattr(book, "ROOT", tmp_path)
    monkeypatch.setattr(book, "EXECUTED", tmp_path / "book" / "executed")
    monkeypatch.setitem(book.PLANS, "smoke", [("laser", "smollm2-135m", {})])
    with pytest.raises(SystemExit) as err:
        book.execute("smoke", tmp_path / "r", None, log=lambda *_: None, calibrate=lambda model, dtype: 1.0)
    msg = str(err.value)
    assert "laser on smollm2-135m failed" in msg and "raise ValueError('broken on purpose')" in msg
    assert "ValueError: broken on purpose" in msg


def test_executed_pages_name_their_model_collapse_code_and_drop_stderr(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# LASER: cutting the rank\nbody"),
        nbformat.v4.new_code_cell("model = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(1)", outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="Loading weights: 100%"),
            nbformat.v4.new_output("stream", name="stdout", text="1\n")])])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    book.tidy_executed(path, "gemma3-270m")
    book.tidy_executed(path, "gemma3-270m")  # idempotent
    out = nbformat.read(path, as_version=4)
    assert out.cells[0].source == "# LASER: cutting the rank (gemma3-270m)\nbody"
    assert out.cells[1].metadata.tags == ["parameters"]
    assert out.cells[2].metadata.tags == ["hide-input"]
    assert [o.name for o in out.cells[2].outputs] == ["stdout"]


def test_every_verdict_parses_and_the_counts_are_claims(tmp_path):
    table = compare.claims(_store_with_results(tmp_path))
    assert table["verdict"].map(verdicts.word).notna().all()
    counts = compare.verdict_counts(table)
    words = compare.claim_words(table)
    assert counts.loc["all papers", "total"] == len(words) == len(table[table.counted])
    bad = table.assign(verdict="not testable (no colon)")
    with pytest.raises(ValueError, match="is not one of"):
        compare.verdict_counts(bad)


def test_verdict_counts_count_each_claim_once():
    row = {"paper": "P", "claim": "c", "paper's number": "", "ours": "", "interval": ""}
    table = pd.DataFrame([row | {"model": "m (seed 0)", "verdict": "agrees", "counted": False},
                          row | {"model": "m (seed 1)", "verdict": "disagrees", "counted": False},
                          row | {"model": "m (2 seeds pooled)", "verdict": "agrees", "counted": True},
                          row | {"model": "m", "claim": "d", "verdict": "not testable: x", "counted": True},
                          row | {"model": "m", "claim": "e", "verdict": "agrees", "counted": True},
                          row | {"model": "m", "claim": "e", "verdict": "not testable: size 2", "counted": True},
                          row | {"model": "m", "claim": "f", "verdict": "agrees", "counted": True},
                          row | {"model": "m", "claim": "f", "verdict": "disagrees", "counted": True}])
    counts = compare.verdict_counts(table)
    assert counts.loc["P"].to_dict() == {"agrees": 2, "disagrees": 0, "inconclusive": 1, "not testable": 1,
                                         "total": 4}


def test_chart_html_survives_a_percent_sign_in_the_title():
    import altair as alt

    from layerlab.book import charts
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y").properties(
        title="accuracy (%) at 50% of the layers")
    page = charts.html(chart)
    assert "accuracy (%) at 50% of the layers" in page and "var id=\"layerlab-chart-" in page


def test_the_decision_table_counts_claims_by_reason():
    rows = [
        {"paper": "A", "claim": "c1", "model": "m", "verdict": "agrees: x", "counted": True},
        {"paper": "A", "claim": "c2", "model": "m", "verdict": "disagrees: smaller than the paper's", "counted": True},
        {"paper": "A", "claim": "c3", "model": "m", "verdict": "inconclusive: admits 0 and +1 pp", "counted": True},
        {"paper": "B", "claim": "c4", "model": "m", "verdict": verdicts.not_testable("24%", cause="model at chance"),
         "counted": True},
        {"paper": "B", "claim": "c5", "model": "m (size 8)", "verdict": "agrees", "counted": True},
        {"paper": "B", "claim": "c5", "model": "m (size 16)", "verdict": "disagrees", "counted": True},
        {"paper": "B", "claim": "c6", "model": "m", "verdict": "agrees", "counted": False},
    ]
    table = pd.DataFrame(rows).assign(**{c: "" for c in ("paper's number", "ours", "interval")})
    t = compare.decision_table(table)
    assert t.loc["A", ["claims", "decided", "agrees", "disagrees", "too few items"]].tolist() == [3, 2, 1, 1, 1]
    assert t.loc["B", ["claims", "decided", "model at chance", "rows differ"]].tolist() == [2, 0, 1, 1]
    assert t.loc["all papers", "decided %"] == 40 and "no data" not in t.columns
    assert not t.isna().any().any()


def test_a_claim_the_profile_does_not_run_is_in_no_count_and_listed_under_full():
    rows = [{"paper": "A", "claim": "c1", "model": "m", "verdict": "agrees: x", "counted": True},
            {"paper": "A", "claim": "c2", "model": "m", "verdict": verdicts.not_run("attention: not swept"),
             "counted": True}]
    table = pd.DataFrame(rows).assign(**{c: "" for c in ("paper's number", "ours", "interval")})
    t = compare.decision_table(table)
    assert t.loc["A", ["claims", "decided"]].tolist() == [1, 1] and t.loc["all papers", "decided %"] == 100
    assert compare.verdict_counts(table).loc["all papers", "total"] == 1
    adds = compare.full_adds(table, "quick")
    assert adds.iloc[0].tolist() == ["A", "c2", "m", "attention: not swept"]
    # the full plan's notebooks the quick plan leaves out (e.g. painters on gemma3-270m)
    assert ((adds["model"] == "gemma3-270m") & adds["claim"].str.contains("painters")).any()
    assert len(compare.full_adds(table, "full")) == 1


def test_a_constant_lens_is_named_and_left_out_of_the_correlations():
    frame = pd.DataFrame({"layer": [0, 1, 2, 3] * 3, "lens": ["a"] * 4 + ["b"] * 4 + ["flat"] * 4,
                          "value": [1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 0, 0]})
    assert compare.constant_lenses(frame) == ["flat"]
    corr = compare.atlas_correlations(frame)
    assert list(corr.columns) == ["a", "b"] and not corr.isna().any().any() and corr.loc["a", "b"] == -1
