"""What the three papers report: every number and claim the book sets beside ours, in one
place, each with the table, figure or section it comes from.

Only the cells the book compares against are transcribed. Accuracies are in %; fractions
of layers in [0, 1]. Chapters, claims and tests read these names; nothing else in the
library hard-codes a paper's number.
"""

from __future__ import annotations

# The smallest effect of interest of a claim with a number: the least effect that still counts
# as the paper's finding, fixed here before any data. Default rule: a third of the paper's own
# effect (after Simonsohn's 2015 "small telescopes", whose benchmark is the effect the original
# study had 33% power to detect; a third of the reported effect is its plain proxy, since the
# papers report no standard errors). A claim that has a better-founded margin says so beside it.
SMALLEST_SHARE = 1 / 3


def smallest_effect(paper_effect: float, share: float = SMALLEST_SHARE) -> float:
    """The smallest effect of interest for a paper's effect (same sign and units)."""
    if not paper_effect:
        raise ValueError(f"paper_effect: {paper_effect!r}; a claim with no effect has no smallest effect of interest")
    return paper_effect * share

# ---------------------------------------------------------------------------- LASER
# Sharma, Ash, Misra (2023), "The Truth is in There", arXiv 2312.13558.

LASER = "LASER"
LASER_RHOS = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01)  # Sec. 4: the rank fractions swept
# Table 1: base and LASER test accuracy (the best (tau, l, rho) chosen on a 20% validation split)
LASER_TABLE1 = [
    {"dataset": "counterfact", "paper_model": "GPT-J", "paper_base": 13.1, "paper_laser": 24.0,
     "source": "Table 1"},
    {"dataset": "fever", "paper_model": "Llama-2-7B", "paper_base": 59.3, "paper_laser": 64.5,
     "source": "Table 1"},
    {"dataset": "bias_in_bios (gender)", "paper_model": "GPT-J", "paper_base": 70.9, "paper_laser": 97.5,
     "source": "Table 1"},
]
# Table 1 holds accuracies and losses only; where the gains sit is read off Fig. 2 (and Sec. 4)
LASER_BEST_LOCATION = "the largest gains come from reducing MLP matrices in the later layers (Fig. 2)"
LASER_ATTENTION = "attention matrices can be reduced heavily with little change in accuracy either way (Fig. 2)"
LASER_ACC_VS_LOSS = "accuracy can rise while the loss of the correct answer worsens (Table 1: accuracy and loss)"
LASER_GREEDY = "GPT-J: composing reductions across layers gives further gains over the best single one (Sec. 5.1)"
LASER_FIG5 = ("GPT-J CounterFact, items LASER corrects: with the FULL matrix the model often predicts generic "
              "high-frequency words (e.g. 'the', 'of', 'and'); the removed higher-order components alone give an "
              "answer of the right semantic type but wrong (Fig. 5a), and are on average semantically closer to "
              "the true answer (Fig. 5b)")
# Table 2 (Sokoban, a Decision Transformer): % of levels solved and the paper's "return"
LASER_TABLE2 = {"model": "Decision Transformer (6 layers; Appendix B says 5)", "env": "10x10 gym-sokoban",
                "base_solved": 50.67, "laser_solved": 53.0, "base_return": 0.575, "laser_return": 0.965,
                "n_levels_inferred": 300, "text": "Sec. 5.3: LASER solves 3% more tasks", "source": "Table 2"}

# ---------------------------------------------------------------------------- Gromov et al.
# Gromov, Tirumala, Shapourian, Glorioso, Roberts (2024), "The Unreasonable Ineffectiveness of
# the Deeper Layers", arXiv 2403.17887.

GROMOV = "Gromov"
# Fig. 2: fraction of layers dropped at which MMLU accuracy falls to chance (25%)
GROMOV_MMLU_CHANCE_FRACTION = {"Llama-2": (0.45, 0.55), "Mistral-7B": (0.35, 0.35), "Phi-2": (0.25, 0.25),
                               "Qwen": (0.20, 0.20)}
GROMOV_HOLDS_THEN_FALLS = "MMLU: 45-55% Llama-2, 35% Mistral-7B, 25% Phi-2, 20% Qwen (Fig. 2)"
GROMOV_HEALING = "LoRA healing repairs much of pruning's loss increase: healed loss close to unpruned (Fig. 3)"
GROMOV_SIMILARITY_VS_DEEPEST = "before healing, the similarity-chosen block has lower loss than dropping the deepest layers (Fig. 5)"
GROMOV_HEALED_HEURISTIC = "after healing, dropping the deepest layers nearly matches similarity pruning (Fig. 5, Sec. 4.3)"
GROMOV_HEALING_QA = "healing shifts the QA collapse to larger fractions (Fig. 2, healed vs unhealed)"
GROMOV_SIMILARITY_VS_DEEPEST_QA = "before healing, similarity-based pruning keeps QA accuracy longer than the heuristic (Fig. 5)"
GROMOV_SMOOTH_LOSS = "after healing, the loss grows smoothly with the fraction dropped while QA accuracy shows a sharp transition (Sec. 4, Figs. 2-3)"
GROMOV_FINAL_BLOCK = "the final block is the most distinct: it is never chosen for removal (Fig. 4)"
GROMOV_DEEP_END = "l*(n), the most similar block, lies in the deeper layers for most n (Fig. 1c, Fig. 4)"

# ---------------------------------------------------------------------------- Painters
# Sun, Pickett, Nain, Jones (2024), "Transformer Layers as Painters", arXiv 2407.09298.

PAINTERS = "Painters"
PAINTERS_BENCHMARKS = ("arc", "hellaswag", "gsm8k", "winogrande", "lambada")  # Sec. 2: five benchmarks, ARC once
PAINTERS_CLAIMS = {
    "shared_space": "middle layers share a representation space: their hidden states are more similar to each "
                    "other than to the first and last layers' (Fig. 3)",
    "not_all_needed": "skipping middle layers degrades gracefully: not all layers are necessary (Fig. 4, Sec. 3.2)",
    "ends_needed": "the first and last layers cannot be skipped: skipping one costs more at the ends than in the "
                   "middle (Sec. 3.1, Fig. 2)",
    "middle_repeat_worst": "running one middle layer in place of all (middle repeat) is the worst variant "
                           "(Sec. 3.8, the comparison of all variants)",
    "order": "random order beats reverse, and both beat skipping the layers (Figs. 6-7)",
    "parallel_between": "running the middle layers in parallel beats skipping them but loses to reversing them "
                        "(Sec. 3.8, the comparison of all variants)",
    "parallel_gsm8k": "running the middle layers in parallel collapses on GSM8K (math) more than elsewhere (Fig. 8)",
    "looped_parallel": "looping parallel layers (3 iterations) beats a single parallel pass (Fig. 9)",
    "best_loops_grow": "the best loop count grows with the number of parallel layers (Fig. 10)",
    "least_degrading": "looped parallel and random order degrade least (Q8: Sec. 3.8, the comparison of all variants)",
    "encoder": "a fine-tuned BERT degrades gracefully under the same variants on GLUE (Appendix, encoder)",
}

# ---------------------------------------------------------------------------- Beyond: which blocks matter
# Peer findings the "criteria against the truth" section tests (layerlab.beyond.agreement).

HINOSTROZA = "Hinostroza et al."
HINOSTROZA_CITATION = ("Hinostroza, Toro Icarte, Devia, Carvallo De Ferari, Herrera-Berg, Parra, Silva (2026), "
                       "\"Rethinking Layer Relevance in Large Language Models Beyond Cosine Similarity\", "
                       "arXiv 2605.14075 (ICLR 2026)")
HINOSTROZA_WEAK_CORRELATION = ("the correlation between cosine-similarity layer relevance and the actual performance "
                               "degradation caused by removing the layer is often weak or moderate (abstract)")
# our threshold for "strong" (the stored abstract states no number): Spearman >= 0.7, the usual convention
HINOSTROZA_STRONG = 0.7

LU = "Lu et al."
LU_CITATION = ("Lu et al. (2024), \"Reassessing Layer Pruning in LLMs: New Insights and Methods\", arXiv 2411.15558 "
               "(ICLR 2026; code: yaolu-zjut/Navigation_LLM_layer_pruning)")
LU_REVERSE_ORDER = ("reverse-order pruning (dropping the final layers) is simple yet effective, ahead of the "
                    "importance and similarity metrics compared; best: drop the final 25%, then fine-tune the lm_head "
                    "and the last three remaining layers (abstract; measured after that fine-tuning)")

SHORTGPT_CITATION = ("Men et al. (2024), \"ShortGPT: Layers in Large Language Models "
                     "are More Redundant Than You Expect\", arXiv 2403.03853 (Block Influence)")
