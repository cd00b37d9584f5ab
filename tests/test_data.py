import hashlib
import json
import shutil

import pytest

from layerlab.core.io import data, data_fetch

# Row counts stated in ../shared/data/SOURCES.md (independent of the loaders).
COUNTS = {
    ("counterfact", "all"): 21919, ("hotpotqa", "dev"): 7405, ("truthfulqa", "validation"): 817,
    ("epistemic_reasoning", "all"): 2000, ("mmlu", "test"): 14042, ("mmlu", "dev"): 285,
    ("arc_easy", "test"): 2376, ("arc_challenge", "test"): 1172, ("arc_easy", "dev"): 570,
    ("arc_challenge", "dev"): 299, ("hellaswag", "validation"): 10042, ("boolq", "validation"): 3270,
    ("winogrande", "dev"): 1267, ("gsm8k", "test"): 1319, ("gsm8k", "train"): 7473,
    ("lambada", "test"): 5153, ("c4", "validation"): 200, ("sst2", "dev"): 872, ("qnli", "dev"): 5463,
    ("rte", "dev"): 277, ("stsb", "dev"): 1500, ("stsb", "train"): 5749, ("mrpc", "test"): 1725,
    ("mrpc", "train"): 4076,
    # FEVER: SUPPORTS + REFUTES of 3333 each per split (NOT ENOUGH INFO dropped, as LASER does)
    ("fever", "dev"): 6666, ("fever", "test"): 6666,
}

needs_data = pytest.mark.skipif(not (data.data_dir() / "SHA256SUMS").exists(), reason="no data dir")


@needs_data
@pytest.mark.parametrize("name,split", sorted(COUNTS))
def test_every_benchmark_loads_with_its_official_count(name, split):
    rows = data.load(name, split)
    assert len(rows) == COUNTS[(name, split)]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows[:50]:
        if "choices" in r:
            assert 0 <= r["label"] < len(r["choices"])


@needs_data
def test_loaded_items_match_the_files():
    assert data.load("counterfact")[0] == {"id": "0", "prompt": "The mother tongue of Danielle Darrieux is",
                                           "answer": "French", "subject": "Danielle Darrieux",
                                           "target_new": "English"}
    mmlu = data.load("mmlu", "test")[0]  # SOURCES.md: abstract_algebra row 1 has answer B
    assert mmlu["subject"] == "abstract_algebra" and mmlu["label"] == 1 and mmlu["choices"][1] == "4"
    wino = data.load("winogrande")[0]
    assert wino["option2"] == "Maria" and wino["label"] == 1
    boolq = data.load("boolq")
    assert sum(r["label"] for r in boolq) == 2033  # 2033 true / 1237 false
    assert sum(r["label"] for r in data.load("epistemic_reasoning")) == 1259  # non-entailment
    hs = data.load("hellaswag")[0]
    assert hs["query"].startswith("Roof shingle removal:") and len(hs["choices"]) == 4
    assert data.load("gsm8k", "test")[0]["target"] == "18"


@needs_data
def test_derivations_reproduce_the_stored_files_byte_for_byte():
    sums = dict(reversed(line.split()) for line in (data.data_dir() / "SHA256SUMS").read_text().splitlines())
    for entry in data_fetch.manifest():
        if entry.get("derived") in data_fetch.DERIVATIONS:
            payload = data_fetch.DERIVATIONS[entry["derived"]](data.data_dir())
            assert hashlib.sha256(payload).hexdigest() == entry["sha256"] == sums["./" + entry["path"]]


def test_missing_file_error_names_file_setting_and_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERLAB_DATA", str(tmp_path))
    with pytest.raises(data.DataFileMissing) as err:
        data.load("boolq")
    msg = str(err.value)
    assert "boolq/val.jsonl" in msg and str(tmp_path) in msg and "LAYERLAB_DATA" in msg and "make data" in msg


def test_bad_names_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="unknown dataset 'nope'; allowed: counterfact, hotpotqa"):
        data.load("nope")
    with pytest.raises(ValueError, match="split 'train' of boolq does not exist; allowed: validation"):
        data.load("boolq", "train")
    with pytest.raises(ValueError, match="bias_in_bios.*not available"):
        data.load("bias_in_bios")


def _mirror(tmp_path, files: dict[str, bytes]):
    """A local mirror laid out as {repo}/{commit}/{path}, plus manifest entries for it."""
    entries = []
    for i, (rel, payload) in enumerate(files.items()):
        src = tmp_path / "mirror" / "owner" / f"repo{i}" / "c0ffee" / "src" / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(payload)
        entries.append({"path": rel, "sha256": hashlib.sha256(payload).hexdigest(),
                        "repo": f"owner/repo{i}", "commit": "c0ffee", "source_path": f"src/{rel}"})
    return entries, "file://" + str(tmp_path / "mirror") + "/{repo}/{commit}/{path}"


def test_fetch_downloads_and_verifies(tmp_path):
    entries, mirror = _mirror(tmp_path, {"a/x.jsonl": b'{"a": 1}\n', "b.txt": b"hello"})
    dest = tmp_path / "data"
    report = data_fetch.fetch(dest, entries, mirror=mirror, log=lambda *_: None)
    assert sorted(report["fetched"]) == ["a/x.jsonl", "b.txt"]
    assert (dest / "b.txt").read_bytes() == b"hello"
    again = data_fetch.fetch(dest, entries, mirror=mirror, log=lambda *_: None)
    assert again["fetched"] == [] and sorted(again["verified"]) == ["a/x.jsonl", "b.txt"]


def test_fetch_mismatch_deletes_and_fails_loudly(tmp_path):
    entries, mirror = _mirror(tmp_path, {"b.txt": b"hello"})
    entries[0]["sha256"] = "0" * 64  # the mirror serves something else than the manifest says
    dest = tmp_path / "data"
    with pytest.raises(data.ChecksumMismatch, match="b.txt.*deleted"):
        data_fetch.fetch(dest, entries, mirror=mirror, log=lambda *_: None)
    assert not (dest / "b.txt").exists() and not list(dest.rglob("*.part"))


def test_fetch_detects_a_corrupted_local_file(tmp_path):
    entries, mirror = _mirror(tmp_path, {"b.txt": b"hello"})
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "b.txt").write_bytes(b"tampered")
    with pytest.raises(data.ChecksumMismatch, match="moved aside to .*b.txt.mismatch-"):
        data_fetch.fetch(dest, entries, mirror=mirror, log=lambda *_: None)
    assert not (dest / "b.txt").exists()
    (aside,) = dest.glob("b.txt.mismatch-*")
    assert aside.read_bytes() == b"tampered"  # the user's file is kept, not deleted


@needs_data
def test_fetch_rebuilds_a_derived_file_from_its_fetched_source(tmp_path):
    src = "winogrande/winogrande_dev_llm_adapters_instruction_format.json"
    entries, mirror = _mirror(tmp_path, {src: (data.data_dir() / src).read_bytes()})
    derived = next(e for e in data_fetch.manifest() if e["path"] == "winogrande/dev.jsonl")
    report = data_fetch.fetch(tmp_path / "data", entries + [derived], mirror=mirror, log=lambda *_: None)
    assert report["derived"] == ["winogrande/dev.jsonl"]
    assert data.load("winogrande", data_dir=tmp_path / "data")[0]["sentence"].startswith("Sarah")


def test_manifest_covers_every_loader_file_with_a_source():
    entries = {e["path"]: e for e in data_fetch.manifest()}
    assert len(entries) == 167
    for e in entries.values():
        assert len(e["sha256"]) == 64
    for rel in ("boolq/val.jsonl", "mmlu/test/virology_test.csv", "hellaswag/hellaswag_val_full.txt.bz2"):
        assert entries[rel]["repo"] and len(entries[rel]["commit"]) == 40


def test_user_facts_are_validated_with_line_numbers(tmp_path):
    good = tmp_path / "facts.jsonl"
    good.write_text(json.dumps({"prompt": "Paris is the capital of", "answer": "France"}) + "\n")
    assert data.load(str(good)) == [{"id": "1", "prompt": "Paris is the capital of", "answer": "France"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 2 has no non-empty string field 'answer'"):
        data.load(str(bad))
    empty_row = tmp_path / "empty.jsonl"
    empty_row.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n\n")
    with pytest.raises(ValueError, match="line 2 is empty"):
        data.load(str(empty_row))
    blank_answer = tmp_path / "blank.jsonl"
    blank_answer.write_text(json.dumps({"prompt": "a", "answer": "  "}) + "\n")
    with pytest.raises(ValueError, match="line 1 has no non-empty string field 'answer'"):
        data.load(str(blank_answer))


def test_dataset_files_cover_what_every_loader_reads(monkeypatch):
    import fnmatch

    assert set(data_fetch.DATASET_FILES) == set(data.DATASETS)
    real_path, read = data.path, []
    monkeypatch.setattr(data, "path", lambda rel, root=None: read.append(rel) or real_path(rel, root))
    for name, (_, splits) in data.DATASETS.items():
        for split in splits:
            read.clear()
            data.load(name, split)
            assert read or name == "mmlu"  # mmlu globs its folder
            for rel in read:
                assert any(fnmatch.fnmatch(rel, g) for g in data_fetch.DATASET_FILES[name]), (name, rel)
    root = data.data_dir()
    assert len(list(root.glob("mmlu/test/*_test.csv"))) == 57 and len(list(root.glob("mmlu/dev/*_dev.csv"))) == 57


def test_files_fingerprint_follows_file_contents_and_loader_code(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    shutil.copytree(data.data_dir() / "glue" / "sst2", root / "glue" / "sst2")
    shutil.copytree(data.data_dir() / "boolq", root / "boolq")
    base = data_fetch.files_fingerprint(["sst2", "boolq"], root)
    assert base == data_fetch.files_fingerprint(["boolq", "sst2", "boolq"], root)  # a set of datasets
    assert base == data_fetch.files_fingerprint(["sst2", "boolq"])  # the real data dir: same files, same fingerprint
    assert data_fetch.files_fingerprint(["sst2"], root) != base
    f = root / "glue" / "sst2" / "dev.tsv"
    f.write_text(f.read_text() + "one more line\t1\n")
    assert data_fetch.files_fingerprint(["sst2", "boolq"], root) != base
    shutil.copy(data.data_dir() / "glue" / "sst2" / "dev.tsv", f)
    assert data_fetch.files_fingerprint(["sst2", "boolq"], root) == base

    def other_loader(split, root):
        return []

    monkeypatch.setitem(data.DATASETS, "sst2", (other_loader, ("dev",)))
    assert data_fetch.files_fingerprint(["sst2", "boolq"], root) != base
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "p", "answer": "a"}\n')
    one = data_fetch.files_fingerprint([str(facts)], root)
    facts.write_text('{"prompt": "p", "answer": "b"}\n')
    assert data_fetch.files_fingerprint([str(facts)], root) != one
