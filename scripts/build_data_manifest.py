"""Write lib/layerlab/core/data_manifest.json from ../shared/data/SHA256SUMS and the source
table below (transcribed from ../shared/data/SOURCES.md). Run again when either changes.

Each entry: path in the data dir, sha256, and either a public source (repo, commit,
path) to fetch or the name of the derivation that rebuilds it from other entries.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"

BOOLQ_REPO = ("FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372")
REACT = ("ysymyth/ReAct", "6bdb3a1fd38b8188fc7ba4102969fe483df8fdc9")
TRUTHX = ("SimarBhatiaSB7/TruthX", "9f9e3d00dd0114d8adda7a86757f01671be59d5f")
MMLU = ("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4")

SOURCES = {
    "counterfact/counterfact-edit.json": ("Jometeorie/KnowledgeSpread", "51d7402617c2e52bde0dc11b76e400c3725a181a", "data/counterfact/counterfact-edit.json"),
    "counterfact/counterfact-train.json": ("Jometeorie/KnowledgeSpread", "51d7402617c2e52bde0dc11b76e400c3725a181a", "data/counterfact/counterfact-train.json"),
    "counterfact/counterfact-val.json": ("Jometeorie/KnowledgeSpread", "51d7402617c2e52bde0dc11b76e400c3725a181a", "data/counterfact/counterfact-val.json"),
    "counterfact/known_1000_with_extra_model_columns.json": ("lab-paper-code/dual_path_attribution", "411720aaa63c1b479ad425d3b950f55d04d72918", "data/known_1000.json"),
    "hotpotqa/hotpot_dev_v1_simplified.json": (*REACT, "data/hotpot_dev_v1_simplified.json"),
    "fever/paper_dev.jsonl": (*REACT, "data/paper_dev.jsonl"),
    "fever/shared_task_dev_claims.json": ("wait22065/fact_verification", "e959552d4bc394b7b2217f1f1858566823991af0", "data/fever_labelled_dev.json"),
    "truthfulqa/mc_task_v0.json": (*TRUTHX, "TruthfulQA/data/v0/mc_task.json"),
    "truthfulqa/mc_task.json": (*TRUTHX, "TruthfulQA/data/mc_task.json"),
    "truthfulqa/TruthfulQA_v0.csv": (*TRUTHX, "TruthfulQA/data/v0/TruthfulQA.csv"),
    "truthfulqa/TruthfulQA.csv": (*TRUTHX, "TruthfulQA/TruthfulQA.csv"),
    "bigbench/epistemic_reasoning/task.json": ("XinyuanWangCS/PromptAgent", "2edfc9e4462a6af97dc973442d074de9b3e876b2", "datasets/epistemic.json"),
    "boolq/val.jsonl": (*BOOLQ_REPO, "data/SuperGLUE/BoolQ/val.jsonl"),
    "c4/c4_realnewslike_validation_first200_truncated.jsonl": ("hlee-top/DualGuard", "aad008ba799371ec854168e8b193b99e666b68b8", "data/c4_val.jsonl"),
    "wikitext2/test.txt": ("pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8", "word_language_model/data/wikitext-2/test.txt"),
    "wikitext2/valid.txt": ("pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8", "word_language_model/data/wikitext-2/valid.txt"),
    "arc/ARC-Challenge-Test.jsonl": (*BOOLQ_REPO, "data/ARC/ARC-c/ARC-Challenge-Test.jsonl"),
    "arc/ARC-Challenge-Dev.jsonl": (*BOOLQ_REPO, "data/ARC/ARC-c/ARC-Challenge-Dev.jsonl"),
    "arc/ARC-Easy-Test.jsonl": (*BOOLQ_REPO, "data/ARC/ARC-e/ARC-Easy-Test.jsonl"),
    "arc/ARC-Easy-Dev.jsonl": (*BOOLQ_REPO, "data/ARC/ARC-e/ARC-Easy-Dev.jsonl"),
    "hellaswag/hellaswag_val_full.txt.bz2": ("klosax/hellaswag_text_data", "1105d370f8340eac3c63a91fd1fa58e8999f9505", "hellaswag_val_full.txt.bz2"),
    "gsm8k/test.jsonl": ("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/test.jsonl"),
    "gsm8k/train.jsonl": ("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/train.jsonl"),
    "winogrande/winogrande_dev_llm_adapters_instruction_format.json": ("AGI-Edgerunners/LLM-Adapters", "816657208af4db747803f87ba40a4c71383fed7a", "dataset/winogrande/test.json"),
    "lambada/lambada_test.jsonl": ("cybertronai/bflm", "620fff70127e0a7c741ee229ed2e33e25dd5185a", "lambada_test.jsonl"),
    "glue/sst2/dev.tsv": ("forest-snow/alps", "3c7ef2c98249fc975a897b27f275695f97d5b7a9", "data/SST-2/test.tsv"),
    "glue/qnli/dev.tsv": ("jonny-vr/LLMCBench", "720be179c2492271f61d7a09291ffd003f36f47d", "data/QNLI/dev.tsv"),
    "glue/rte/superglue_rte_val.jsonl": (*BOOLQ_REPO, "data/SuperGLUE/RTE/val.jsonl"),
    "glue/stsb/sts-dev.csv": ("amao0o0/SynWMD", "59042a92e862db58bd01e47914345d2f52d2a4a3", "data/downstream/STS/STSBenchmark/stsbenchmark/sts-dev.csv"),
    "glue/stsb/sts-train.csv": ("amao0o0/SynWMD", "59042a92e862db58bd01e47914345d2f52d2a4a3", "data/downstream/STS/STSBenchmark/stsbenchmark/sts-train.csv"),
    "glue/mrpc/msr_paraphrase_test.txt": ("Pzeyang/Paraphrase_Identification", "dc1755eb1a4755ca310f97209391f1f5c06e2fd1", "msr_paraphrase_test.txt"),
}
DERIVED = {
    "fever/paper_test_derived.jsonl": ("fever_paper_test", ["fever/shared_task_dev_claims.json", "fever/paper_dev.jsonl"]),
    "winogrande/dev.jsonl": ("winogrande_dev", ["winogrande/winogrande_dev_llm_adapters_instruction_format.json"]),
    "glue/mrpc/msr_paraphrase_train.txt": ("mrpc_train", []),
}
# The MRPC train file is derived from an upstream file whose own checksum is not recorded
# here, so `make data` can only verify it, not rebuild it.
MMLU_DIRS = ("dev", "test")

sums = {}
for line in (DATA / "SHA256SUMS").read_text().splitlines():
    digest, path = line.split(maxsplit=1)
    sums[path.removeprefix("./")] = digest

entries = []
for path, digest in sorted(sums.items()):
    entry = {"path": path, "sha256": digest}
    if path in SOURCES:
        repo, commit, src = SOURCES[path]
        entry.update(repo=repo, commit=commit, source_path=src)
    elif path.startswith("mmlu/") and path.endswith(".csv"):
        split, name = path.split("/")[1:]
        entry.update(repo=MMLU[0], commit=MMLU[1], source_path=f"data/mmlu/{split}/{name}")
    elif path in DERIVED:
        entry.update(derived=DERIVED[path][0], inputs=DERIVED[path][1])
    else:
        entry.update(note="licence or documentation file; see SOURCES.md for its origin")
    entries.append(entry)

out = ROOT / "lib" / "layerlab" / "core" / "data_manifest.json"
out.write_text(json.dumps({"files": entries}, indent=1) + "\n")
print(f"wrote {out}: {len(entries)} files, "
      f"{sum('repo' in e for e in entries)} fetchable, {sum('derived' in e for e in entries)} derived")
