"""Build the book: execute each technique notebook for each model of a profile with
papermill into ``book/executed/``, then build the HTML with Jupyter Book 1.x.

    python -m layerlab.book --profile quick      # what `make book` runs

Results are cached in ``results/<profile>/`` (override with --results-dir), so a second
build recomputes nothing. A failing notebook stops the build with the failing cell.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from layerlab.core.model.models import DTYPES

ROOT = Path(__file__).resolve().parents[3]
BOOK = ROOT / "book"
EXECUTED = BOOK / "executed"
PROFILES = ("smoke", "quick", "full")

QWEN = "qwen2.5-coder-1.5b"
# Every chapter runs in dtype "auto": bfloat16 where the CPU computes it natively (avx512_bf16 or AMX:
# there smollm2 ran 1.6x and gemma3 2.3x faster than in fp32), float32 elsewhere (on an AVX2-only CPU
# bf16 ran 4.5-6x slower than fp32). `make book DTYPE=float32` forces a dtype for every language model.
# Qwen2.5-Coder-1.5B in the quick book: the deeper-layers curve on MMLU, which it is well above
# chance on (the headline claim the smaller models cannot test), and LASER on CounterFact over its
# deepest quarter. Its healing, payoff and Painters runs are in the full profile.
QWEN_QUICK = [
    # gate (gate_proj) is what the official LASER code reduces as U_in (fc_in) in Llama-family MLPs
    # one rho at the quick profile's 400 CounterFact items: the same item-points as 4 rhos at 100 (#29)
    ("laser", QWEN, {"datasets": ["counterfact"], "layers": list(range(21, 28)), "rhos": [0.01],
                     "matrix_types": ["gate", "mlp_in", "mlp_out"], "greedy_layers": list(range(21, 28)),
                     "greedy_rhos": [0.01]}),
    ("prune", QWEN, {"eval_tasks": ["mmlu"], "heuristic_tasks": ["mmlu"], "limit": 100,
                     "fractions": [0, 0.1, 0.2, 0.3, 0.4, 0.5], "heal": False, "payoff_fractions": []}),
]
# "Beyond the papers": which blocks matter (criteria against the truth), sublayer surgery,
# healing by the head and last blocks, LASER without a search and the bottom of the spectrum.
BEYOND = {
    "smoke": [("beyond_criteria", "smollm2-135m", {"mmlu": False}), ("beyond_sublayers", "smollm2-135m", {}),
              ("beyond_healing", "smollm2-135m", {}), ("beyond_laser", "smollm2-135m", {})],
    # after the LASER and prune chapters, whose stored points they reuse (LASER's sweep, the LoRA heals);
    # smollm2 is at chance on MMLU: its truth is the held-out loss. Qwen's maps are in the full profile.
    "quick": [("beyond_criteria", "smollm2-135m", {"mmlu": False}), ("beyond_sublayers", "smollm2-135m", {}),
              ("beyond_healing", "smollm2-135m", {"methods": ["similarity"]}), ("beyond_laser", "smollm2-135m", {})],
    "full": [("beyond_criteria", "smollm2-135m", {"mmlu": False}), ("beyond_criteria", QWEN, {}),
             ("beyond_sublayers", "smollm2-135m", {}), ("beyond_sublayers", QWEN, {"tasks": ["mmlu"], "limit": 100}),
             ("beyond_healing", "smollm2-135m", {}), ("beyond_healing", QWEN, {}),
             ("beyond_laser", "smollm2-135m", {}), ("beyond_laser", QWEN, {})],
}
# (technique notebook, model, extra parameters) per profile
PLANS: dict[str, list[tuple[str, str, dict]]] = {
    "smoke": [("laser", "smollm2-135m", {}), ("laser_sokoban", "sokoban-dt", {}), ("prune", "smollm2-135m", {}),
              ("painters", "smollm2-135m", {"encoder": "minilm-l6"}), *BEYOND["smoke"]],
    # gemma3-270m's deeper-layers run (23 min cold in fp32, at chance on MMLU) is in the full profile,
    # making room for Qwen2.5-Coder-1.5B, which can show the MMLU collapse.
    # Cut to fit the 80-minute cold quick book with the Beyond part (each cut's claims in the note of
    # issue #22): gemma3-270m's LASER on the two datasets whose claims the comparison page tests
    # (CounterFact, FEVER; HotpotQA, TruthfulQA and epistemic reasoning are Table 1 rows only: on
    # smollm2 here, on gemma3 in full); smollm2's deeper-layers curve without HellaSwag, where 40
    # items cannot clear the floor (its two claims were "not testable" in every quick run).
    "quick": [("laser", "smollm2-135m", {}), ("laser", "gemma3-270m", {"datasets": ["counterfact", "fever"]}),
              QWEN_QUICK[0], ("prune", "smollm2-135m", {"eval_tasks": ["arc_easy"]}), QWEN_QUICK[1],
              ("painters", "smollm2-135m", {"encoder": "minilm-l6"}),
              ("laser_sokoban", "sokoban-dt", {}), *BEYOND["quick"]],
    "full": [("laser", "smollm2-135m", {}), ("laser", "gemma3-270m", {}), ("laser", QWEN, {}),
             ("laser_sokoban", "sokoban-dt", {}),
             ("prune", "smollm2-135m", {}), ("prune", "gemma3-270m", {}), ("prune", QWEN, {}),
             ("painters", "smollm2-135m", {"encoder": "minilm-l6"}), ("painters", "gemma3-270m", {"encoder": ""}),
             ("painters", QWEN, {"encoder": ""}), *BEYOND["full"]],
}
BEYOND_NOTEBOOKS = ("beyond_criteria", "beyond_sublayers", "beyond_healing", "beyond_laser")
# what --dtype applies to (the Sokoban agent keeps its own)
LANGUAGE_MODEL_CHAPTERS = ("laser", "prune", "painters", *BEYOND_NOTEBOOKS)
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
           '<rect x="1" y="2" width="14" height="3" fill="#4c78a8"/><rect x="1" y="7" width="14" height="3" '
           'fill="#f58518"/><rect x="1" y="12" width="14" height="3" fill="#54a24b"/></svg>')
CHAPTERS = {"laser": "book/laser", "prune": "book/prune", "painters": "book/painters", "beyond": "book/beyond"}
PARTS = {"Replications": ("laser", "prune", "painters"), "Beyond the papers": ("beyond",)}
CHAPTER_OF = {"laser": "laser", "laser_sokoban": "laser", "prune": "prune", "painters": "painters",
              **{name: "beyond" for name in BEYOND_NOTEBOOKS}}  # notebook -> chapter
RESULT_PAGES = ("comparison.ipynb", "reproducibility.ipynb")  # pages that only read the results


def executed_name(technique: str, model: str) -> str:
    return f"{technique}-{model.replace('/', '_').replace('.', '_')}"


def toc(profile: str) -> str:
    """The table of contents for a profile's executed notebooks."""
    plan = PLANS[profile]
    lines = ["format: jb-book", "root: book/intro", "parts:"]
    for caption, chapters in PARTS.items():
        lines += [f"  - caption: {caption}", "    chapters:"]
        for technique in chapters:
            lines.append(f"      - file: {CHAPTERS[technique]}")
            runs = [executed_name(t, m) for t, m, _ in plan if CHAPTER_OF[t] == technique]
            if runs:
                lines.append("        sections:")
                lines += [f"          - file: book/executed/{name}" for name in runs]
    lines += ["  - caption: Synthesis", "    chapters:", "      - file: book/comparison",
              "  - caption: Appendix", "    chapters:", "      - file: book/reproducibility"]
    return "\n".join(lines) + "\n"


def tidy_executed(path: Path, model: str) -> None:
    """Make an executed notebook read well as a book page: its title names the model (the
    sidebar lists one page per model), code cells are collapsed except the parameter cells,
    and stderr (progress bars, library warnings) stays on the console, out of the page."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            title, _, rest = cell.source.partition("\n")
            if f"({model})" not in title:
                cell.source = f"{title} ({model})\n{rest}"
            break
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if not {"parameters", "injected-parameters"} & set(tags) and "hide-input" not in tags:
            tags.append("hide-input")
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    nbformat.write(nb, path)


def chapter_plan(profile: str, dtype: str | None = None) -> list[tuple[str, str, dict]]:
    """The profile's (technique, model, parameters), with ``dtype`` (if given) forced on
    every language-model chapter; refused before anything runs when it is not a dtype."""
    if dtype is not None and dtype not in ("auto", *DTYPES):
        raise SystemExit(f"[book] --dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return [(t, m, extra | ({"dtype": dtype} if dtype and t in LANGUAGE_MODEL_CHAPTERS else {}))
            for t, m, extra in PLANS[profile]]


def execute(profile: str, results_dir: Path, data_dir: str | None, log=print, dtype: str | None = None,
            calibrate=None, dry_run: Path | None = None) -> list[dict]:
    """Run every notebook of the profile; raise SystemExit naming the failing cell. Prints
    the plan with each chapter's estimated minutes first (``estimate``), and shows the
    chapter's and the whole run's time left while it runs. ``dry_run`` (a folder): the
    profile's plan on tiny random models with only the sizes cut (``dry_run.plan``), the
    models in ``dry_run/tiny-models`` and the notebooks in ``dry_run/executed`` (the
    book's own stay as they are)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from . import estimate
    from layerlab.core.compute.machine import machine_info

    plan = chapter_plan(profile, dtype)
    names = [executed_name(t, m) for t, m, _ in plan]
    executed = EXECUTED
    if dry_run is not None:
        from . import dry_run as dry

        plan, executed = dry.plan(plan, Path(dry_run) / "tiny-models"), Path(dry_run) / "executed"
    rows = estimate.plan_estimate([(t, m, extra.get("dtype", "auto")) for t, m, extra in plan], profile,
                                  **({"calibrate": calibrate} if calibrate else {}))
    for (technique, _, _), row in zip(plan, rows):
        row["resolved"] = _resolved(row["dtype"], technique)
    log(estimate.summary(rows))
    if profile == "full" and dry_run is None:
        log(counted_work_plan(profile, rows, dtype or "auto"))
    machine = machine_info()
    executed.mkdir(parents=True, exist_ok=True)
    times = []
    with estimate.Progress([r["estimate_s"] for r in rows]) as progress:
        for (technique, model, extra), row, name in zip(plan, rows, names):
            out = executed / f"{name}.ipynb"
            params = {"model": model, "profile": profile, "results_dir": str(results_dir), **extra}
            if data_dir:
                params["data_dir"] = data_dir
            log(f"[book] {technique} on {model} ({profile}, {row['resolved']}) -> {out}")
            progress.start(f"{technique} on {model}")
            start = time.time()
            try:
                pm.execute_notebook(str(ROOT / "notebooks" / f"{technique}.ipynb"), str(out), parameters=params,
                                    cwd=str(ROOT), progress_bar=False, kernel_name="python3", log_output=False,
                                    stderr_file=sys.stderr)
            except PapermillExecutionError as err:
                raise SystemExit(f"[book] notebook {technique} on {model} failed in cell {err.exec_count}:\n"
                                 f"{err.source}\n{err.ename}: {err.evalue}\n(executed copy with the traceback: {out})")
            tidy_executed(out, model)
            progress.finish()
            times.append({"technique": technique, "model": model, "seconds": time.time() - start,
                          "dtype": row["resolved"], "speed": round(row["speed"], 2),
                          "estimate_s": None if row["estimate_s"] is None else round(row["estimate_s"]), **machine})
            log(f"[book]   done in {times[-1]['seconds']:.0f} s"
                + ("" if row["estimate_s"] is None else f" (estimated {row['estimate_s']:.0f} s)"))
    return times


def counted_work_plan(profile: str, rows: list[dict], dtype: str = "auto") -> str:
    """The profile's plan from the work each chapter does (``work``: block-tokens, SVDs,
    training tokens), on one H100 at a stated speed and on this CPU at the speeds the
    calibration just measured (``rows``: ``estimate.plan_estimate``'s), both labelled as
    estimates. The full profile has no measured cold run to scale, so this is its plan."""
    from . import estimate, work

    measured = {(r["model"], r["dtype"]): r["speed"] for r in rows}

    def calibrate(model: str, dtype: str) -> float:  # a model no chapter calibrated (the encoder) is timed now
        return measured.get((model, dtype)) or estimate.tokens_per_second(model, dtype)

    plan = chapter_plan(profile, None if dtype == "auto" else dtype)
    return "\n".join([work.plan_lines(plan, profile, "h100"), work.plan_lines(plan, profile, "cpu", dtype, calibrate)])


def _resolved(dtype: str, technique: str) -> str:
    """The dtype a chapter ran in ("auto" resolved as the notebook resolves it)."""
    if technique == "laser_sokoban" and dtype == "auto":
        from layerlab.laser.sokoban.agent import resolve
        return str(resolve("auto", dtype)[1]).removeprefix("torch.")
    from layerlab.core.model.models import resolve_dtype
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def build_html(profile: str, results_dir: Path, log=print) -> Path:
    from .charts import write_js_bundle

    write_js_bundle(BOOK / "_static" / "vega-bundle.js")
    (BOOK / "_static" / "favicon.svg").write_text(FAVICON, encoding="utf-8")
    toc_path = ROOT / "_toc.yml"
    if profile != "quick" or not toc_path.exists():
        toc_path = ROOT / "_build" / f"_toc.{profile}.yml"
        toc_path.parent.mkdir(parents=True, exist_ok=True)
        toc_path.write_text(toc(profile))
    # Sphinx re-reads only sources whose mtime changed, and these pages read the results,
    # not their own source: mark them changed so that (with execute_notebooks: force) they
    # run again on every build instead of showing the previous build's numbers.
    for page in RESULT_PAGES:
        os.utime(BOOK / page)
    env = {**os.environ, "LAYERLAB_RESULTS": str(results_dir), "LAYERLAB_PROFILE": profile}
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--toc", str(toc_path),
           "--path-output", str(ROOT)]
    log("[book] " + " ".join(cmd[2:]))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or "Traceback" in proc.stdout:
        raise SystemExit(f"[book] jupyter-book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    html = ROOT / "_build" / "html"
    log(f"[book] built {html / 'index.html'}")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help=f"one of {', '.join(PROFILES)} (default quick)")
    parser.add_argument("--results-dir", default=None, help="default: results/<profile>")
    parser.add_argument("--data-dir", default=None, help="default: $LAYERLAB_DATA or ../shared/data")
    parser.add_argument("--dtype", default=None, help="force a dtype on every language-model chapter: "
                        f"auto, {', '.join(DTYPES)} (default: each chapter's own, auto)")
    parser.add_argument("--skip-execute", action="store_true", help="only rebuild the HTML")
    parser.add_argument("--dry-run", action="store_true", help="every chapter of the profile on tiny random models "
                        "with only the sizes cut; no HTML "
                        "(layerlab.book.dry_run)")
    args = parser.parse_args(argv)
    if args.profile not in PROFILES:
        parser.error(f"--profile: {args.profile!r} is not one of {', '.join(PROFILES)}")
    if args.dry_run and args.skip_execute:
        parser.error("--dry-run executes the chapters; it cannot be combined with --skip-execute")
    default = ROOT / "results" / (args.profile + ("-dry-run" if args.dry_run else ""))
    results_dir = Path(args.results_dir or default).resolve()
    start = time.time()
    if args.dry_run:  # results_dir holds the store (results/), the tiny models and the executed notebooks
        execute(args.profile, results_dir / "results", args.data_dir, dtype=args.dtype, dry_run=results_dir)
        print(f"[book] dry run of {args.profile}: every chapter ran ({time.time() - start:.0f} s); read every claim "
              f"from its results with: python scripts/claims_table.py {results_dir / 'results'}")
        return 0
    if not args.skip_execute:
        from layerlab.core.io.results import record_timing
        for t in execute(args.profile, results_dir, args.data_dir, dtype=args.dtype):
            record_timing(results_dir, f"book:{t.pop('technique')}", t.pop("model"), args.profile, t.pop("seconds"), **t)
    build_html(args.profile, results_dir)
    print(f"[book] total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
