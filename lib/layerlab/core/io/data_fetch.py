"""``make data``: fetch every benchmark file from its public source and verify its
checksum; and the data's fingerprint for the results keys (``files_fingerprint``).

``python -m layerlab.core.io.data_fetch fetch [DATA_DIR]`` runs ``main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.request
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from layerlab.core.io.files import cached_sha256, sha256  # noqa: F401  (sha256: make data's checksums)
from layerlab.core.io.data import DATASETS, DEFAULT_MIRROR, MIRROR_ENV, ChecksumMismatch, _json, _jsonl, data_dir, load_user_facts

_data_root = data_dir  # files_fingerprint's parameter shadows the name


def manifest() -> list[dict]:
    return json.loads(resources.files("layerlab.core.io").joinpath("data_manifest.json").read_text())["files"]


def _derive_fever_paper_test(root: Path) -> bytes:
    dev_ids = {r["id"] for r in _jsonl(root / "fever/paper_dev.jsonl")}
    rows = [{"id": r["id"], "label": r["label"], "claim": r["claim"], "evidence_pages": r["evidence_pages"]}
            for r in _json(root / "fever/shared_task_dev_claims.json") if r["id"] not in dev_ids]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _derive_winogrande_dev(root: Path) -> bytes:
    pattern = re.compile(r"sentence: (.*)\n\nOption1: (.*) Option2: (.*) Answer format: option1/option2", re.S)
    out = []
    for r in _json(root / "winogrande/winogrande_dev_llm_adapters_instruction_format.json"):
        sentence, o1, o2 = pattern.search(r["instruction"]).groups()
        out.append({"sentence": sentence, "option1": o1, "option2": o2, "answer": r["answer"][-1]})
    return "".join(json.dumps(r) + "\n" for r in out).encode()


DERIVATIONS: dict[str, Callable[[Path], bytes]] = {
    "fever_paper_test": _derive_fever_paper_test,
    "winogrande_dev": _derive_winogrande_dev,
}


def _write_verified(target: Path, payload: bytes, expected: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(payload)
    got = sha256(tmp)
    if got != expected:
        tmp.unlink()
        target.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{target}: sha256 {got} does not match the manifest's {expected}; the file was deleted")
    os.replace(tmp, target)


def fetch(root: str | os.PathLike | None = None, entries: list[dict] | None = None,
          mirror: str | None = None, log=print) -> dict[str, list[str]]:
    """Fetch every manifest file missing from the data dir, then verify every file.

    mirror: URL template with {repo}, {commit}, {path} (default ``$LAYERLAB_DATA_MIRROR`` or
    GitHub raw). A downloaded file that mismatches is discarded; an existing file that
    mismatches is moved aside (``<name>.mismatch-<sha>``); both raise ChecksumMismatch.
    Returns {"fetched": [...], "derived": [...], "verified": [...], "unavailable": [...]}.
    """
    root = data_dir(root)
    entries = manifest() if entries is None else entries
    mirror = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    report: dict[str, list[str]] = {"fetched": [], "derived": [], "verified": [], "unavailable": []}
    ordered = sorted(entries, key=lambda e: "derived" in e)  # sources before derivations
    for e in ordered:
        target = root / e["path"]
        if target.exists():
            got = sha256(target)
            if got != e["sha256"]:  # never delete a user's file: move it aside and say where
                aside = target.with_name(f"{target.name}.mismatch-{got[:8]}")
                os.replace(target, aside)
                raise ChecksumMismatch(f"{target}: sha256 {got} does not match the manifest's {e['sha256']}; "
                                       f"the file was moved aside to {aside}. Run `make data` again to fetch it.")
            report["verified"].append(e["path"])
            continue
        if "repo" in e:
            url = mirror.format(repo=e["repo"], commit=e["commit"], path=e["source_path"])
            log(f"fetching {e['path']} from {e['repo']}@{e['commit'][:10]}")
            with urllib.request.urlopen(url, timeout=120) as resp:
                payload = resp.read()
            _write_verified(target, payload, e["sha256"])
            report["fetched"].append(e["path"])
        elif e.get("derived") in DERIVATIONS:
            _write_verified(target, DERIVATIONS[e["derived"]](root), e["sha256"])
            report["derived"].append(e["path"])
        else:
            report["unavailable"].append(e["path"])
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "fetch":
        print("usage: python -m layerlab.core.io.data_fetch fetch [DATA_DIR]")
        return 2
    report = fetch(argv[1] if len(argv) > 1 else None)
    for k, v in report.items():
        print(f"{k}: {len(v)}")
    if report["unavailable"]:
        print("not fetched automatically (see SOURCES.md):", *report["unavailable"], sep="\n  ")
    return 0



# ---------------------------------------------------------------------------- cached hashes



# ---------------------------------------------------------------------------- fingerprints

# the data dir's files each dataset reads (every split), as globs relative to the data dir
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "counterfact": ("counterfact/counterfact-edit.json", "counterfact/counterfact-train.json",
                    "counterfact/counterfact-val.json"),
    "hotpotqa": ("hotpotqa/hotpot_dev_v1_simplified.json",),
    "fever": ("fever/paper_dev.jsonl", "fever/paper_test_derived.jsonl"),
    "truthfulqa": ("truthfulqa/mc_task_v0.json",),
    "epistemic_reasoning": ("bigbench/epistemic_reasoning/task.json",),
    "mmlu": ("mmlu/test/*_test.csv", "mmlu/dev/*_dev.csv"),
    "arc_easy": ("arc/ARC-Easy-Test.jsonl", "arc/ARC-Easy-Dev.jsonl"),
    "arc_challenge": ("arc/ARC-Challenge-Test.jsonl", "arc/ARC-Challenge-Dev.jsonl"),
    "hellaswag": ("hellaswag/hellaswag_val_full.txt.bz2",),
    "boolq": ("boolq/val.jsonl",),
    "winogrande": ("winogrande/dev.jsonl",),
    "gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl"),
    "lambada": ("lambada/lambada_test.jsonl",),
    "wikitext2": ("wikitext2/test.txt", "wikitext2/valid.txt"),
    "c4": ("c4/c4_realnewslike_validation_first200_truncated.jsonl",),
    "sst2": ("glue/sst2/dev.tsv",),
    "qnli": ("glue/qnli/dev.tsv",),
    "rte": ("glue/rte/superglue_rte_val.jsonl",),
    "mrpc": ("glue/mrpc/msr_paraphrase_test.txt", "glue/mrpc/msr_paraphrase_train.txt"),
    "stsb": ("glue/stsb/sts-dev.csv", "glue/stsb/sts-train.csv"),
}


def files_fingerprint(names: Iterable[str], data_dir: str | os.PathLike | None = None) -> str:
    """A short hex fingerprint of what the records of datasets ``names`` are made from: the
    SHA-256 of every data file they read (``DATASET_FILES``; a user's ``.jsonl`` file by its
    own content) and the source code of their loaders. Put it in a results key: a rewritten
    data file or a changed loader makes a new key. File hashes are cached by path, size and
    mtime (``cached_sha256``), so a repeated call only stats the files. The data dir's
    location is not part of it; a missing file is recorded as missing (loading it fails)."""
    import inspect

    root = _data_root(data_dir)
    parts: list = []
    for name in sorted(set(names)):
        if name not in DATASETS:
            user = Path(name).expanduser()
            parts.append([name, cached_sha256(user) if user.is_file() else "missing",
                          inspect.getsource(load_user_facts)])
            continue
        files = []
        for pattern in DATASET_FILES[name]:
            found = sorted(root.glob(pattern))
            files += [[str(f.relative_to(root)), cached_sha256(f)] for f in found] or [[pattern, "missing"]]
        parts.append([name, files, inspect.getsource(DATASETS[name][0])])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


if __name__ == "__main__":
    raise SystemExit(main())
