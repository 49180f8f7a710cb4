#!/usr/bin/env python3
"""Runs `pagedkv-dump --json` on sample snapshots and validates every output against
tools/pagedkv-dump.schema.json, then checks what a schema cannot say (counts that add up).
Also proves the schema rejects wrong documents, so this test can fail.

usage: check_dump_json.py PAGEDKV_DUMP SCHEMA SAMPLES_DIR
"""
import copy
import json
import pathlib
import subprocess
import sys

try:
    import jsonschema
except ImportError:
    sys.exit("check_dump_json: the python3 module jsonschema is missing; install the Debian "
             "package python3-jsonschema (tools/quickstart does)")


def dump(exe, args):
    r = subprocess.run([exe, "--json", *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or r.stderr:
        sys.exit(f"pagedkv-dump {' '.join(args)}: status {r.returncode}, stderr {r.stderr!r}")
    return json.loads(r.stdout)


def consistent(doc, where):
    pool, layout = doc["pool"], doc["layout"]
    problems = []

    def expect(ok, what):
        if not ok:
            problems.append(f"{where}: {what}")

    expect(pool["num_blocks"] == layout["num_blocks"], "num_blocks differs from the layout")
    expect(pool["used_blocks"] + pool["free_blocks"] + pool["cached_blocks"] == pool["num_blocks"],
           "used + free + cached != total")
    expect(len(pool["refcounts"]) == pool["num_blocks"], "one refcount per block")
    expect(sum(pool["refcount_histogram"]) == pool["num_blocks"], "histogram does not sum to blocks")
    expect(sum(pool["refcounts"]) == pool["references"], "references != sum of refcounts")
    prefix = doc["prefix_cache"]
    cached = set(prefix["cached"])
    expect(sorted(pool["free_list"]) ==
           [b for b, r in enumerate(pool["refcounts"]) if r == 0 and b not in cached],
           "free list is not exactly the unreferenced blocks that are not cached")
    expect(prefix["cached"] == sorted(cached), "cached blocks not ascending")
    expect(sorted(prefix["evictable"]) ==
           [b for b in prefix["cached"] if pool["refcounts"][b] == 0],
           "evictable is not exactly the unreferenced cached blocks")
    expect(len(prefix["evictable"]) == pool["cached_blocks"], "cached_blocks != evictable pages")
    expect(len(cached) - pool["cached_blocks"] == pool["cached_held_blocks"], "cached_held_blocks")
    expect(sorted(e["block"] for e in prefix["entries"]) == prefix["cached"],
           "one prefix entry per cached block")
    seen = set()
    for e in prefix["entries"]:
        expect(e["parent"] is None or e["parent"] in seen, f"block {e['block']} before its parent")
        seen.add(e["block"])
        expect(len(e["tokens"]) == layout["block_size"], f"block {e['block']}: block_size tokens")
        expect(e["refcount"] == pool["refcounts"][e["block"]], f"block {e['block']}: refcount")
        expect(e["evictable"] == (e["block"] in prefix["evictable"]), f"block {e['block']}: evictable")
        if e["evictable"]:
            expect(prefix["evictable"][e["lru_position"]] == e["block"],
                   f"block {e['block']}: lru_position")
    expect(pool["slots_held"] == pool["used_blocks"] * layout["block_size"], "slots_held")
    expect(pool["waste_slots"] == pool["slots_held"] - pool["tokens_stored"], "waste_slots")
    for cache in doc["caches"]:
        for row in cache["rows"]:
            expect(len(row["shared"]) == len(row["blocks"]), f"cache {cache['index']} shared flags")
            expect(all(s == (pool["refcounts"][b] > 1) for b, s in zip(row["blocks"], row["shared"])),
                   f"cache {cache['index']} row {row['row']} shared flags disagree with refcounts")
            expect(len(row["lengths"]) == layout["model_layers"], "one length per model layer")
            expect(len(row["dropped"]) == layout["model_layers"], "one dropped count per layer")
            expect(row["length"] == max(row["lengths"]), "length is the longest layer")
            # With layer groups, first_slot and end_slot are over group 0's layers.
            group0 = row["groups"][0]["layers"] if row["groups"] else range(len(row["lengths"]))
            held = [(row["starts"][l], row["starts"][l] + row["lengths"][l]) for l in group0
                    if row["lengths"][l] > 0]
            if held:
                expect(row["first_slot"] == min(a for a, _ in held) and
                       row["end_slot"] == max(b for _, b in held),
                       f"cache {cache['index']} row {row['row']}: first_slot/end_slot are not "
                       "the span of its layers' slots")
            else:
                expect(row["first_slot"] == row["end_slot"], "an empty row's slot span")
            expect(row["end_slot"] <= len(row["blocks"]) * layout["block_size"],
                   f"cache {cache['index']} row {row['row']}: end_slot beyond its pages")
            windows = layout["layer_windows"]
            expect(bool(row["groups"]) == bool(windows), "groups exactly with layer windows")
            if not windows:
                expect(not any(row["dropped"]), "tokens let go without layer windows")
            if row["groups"]:
                expect(row["groups"][0]["blocks"] == row["blocks"], "group 0's table is blocks")
                expect(sorted(l for g in row["groups"] for l in g["layers"]) ==
                       list(range(layout["model_layers"])), "every layer in one group")
            for g in row["groups"]:
                where_g = f"cache {cache['index']} row {row['row']} group {g['group']}"
                expect(all(windows[l] == g["window"] for l in g["layers"]),
                       f"{where_g}: a layer of another window")
                expect(len(g["layers"]) <= layout["num_layers"], f"{where_g}: more layers than a page")
                expect(all(s == (pool["refcounts"][b] > 1) for b, s in zip(g["blocks"], g["shared"])),
                       f"{where_g}: shared flags disagree with refcounts")
                expect(g["end_slot"] <= len(g["blocks"]) * layout["block_size"],
                       f"{where_g}: end_slot beyond its pages")
            if doc["selection"]["row"] is not None:
                expect(row["row"] == doc["selection"]["row"], "a row outside the selection")
        if doc["selection"]["cache"] is not None:
            expect(cache["index"] == doc["selection"]["cache"], "a cache outside the selection")
    return problems


def main():
    exe, schema_path, samples = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    schema = json.loads(schema_path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)

    runs = [
        ("sample.snap", []),
        ("sample.snap", ["--cache", "1"]),
        ("sample.snap", ["--cache", "0", "--row", "1"]),
        ("sample.snap", ["--row", "0"]),
        ("sample-pages.snap", []),
        ("sample-token-major.snap", []),
        ("empty.snap", []),
        ("sample-cached.snap", []),
        ("sample-cached-pages.snap", ["--row", "1"]),
        ("showcase.snap", []),
        ("sample-hybrid.snap", []),
        ("sample-hybrid.snap", ["--row", "1"]),
    ]
    failures = []
    docs = []
    for name, args in runs:
        where = f"{name} {' '.join(args)}".strip()
        doc = dump(exe, [*args, str(samples / name)])
        docs.append(doc)
        failures += [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
        failures += consistent(doc, where)
    # The text report lists the free list in the same order, top first (up to 32 entries).
    for name in ("sample.snap", "showcase.snap", "sample-cached.snap"):
        r = subprocess.run([exe, str(samples / name)], capture_output=True, text=True, timeout=60)
        line = next(l for l in r.stdout.splitlines() if l.startswith("free list  "))
        shown = [int(x) for x in line[len("free list  "):].split("  (")[0].split()]
        doc = dump(exe, [str(samples / name)])
        if shown != doc["pool"]["free_list"][:32]:
            failures.append(f"{name}: text free list {shown}, JSON {doc['pool']['free_list']}")
    layouts = [d["layout"]["page_layout"] for d in docs]
    if layouts[0] != "head_major" or "token_major" not in layouts:
        failures.append(f"the samples should be head-major and one token-major, are {layouts}")
    if not any(d["prefix_cache"]["evictable"] and d["pool"]["cached_held_blocks"] for d in docs):
        failures.append("no sample has both held and evictable cached pages")
    if not any(r["groups"] for d in docs for c in d["caches"] for r in c["rows"]):
        failures.append("no sample has layer groups")
    kinds = {c["kind"] for c in docs[0]["caches"]}
    if kinds != {"dynamic", "static", "sliding"}:
        failures.append(f"the sample should cover every cache kind, has {sorted(kinds)}")

    # Documents the schema must refuse: otherwise validating proves nothing.
    cached_entry = next(d for d in docs if d["prefix_cache"]["entries"])["prefix_cache"]["entries"][0]

    def broken(edit):
        d = copy.deepcopy(docs[0])
        edit(d)
        return d

    wrong = {
        "schema_version 1": broken(lambda d: d.__setitem__("schema_version", 1)),
        "a row without first_slot": broken(lambda d: d["caches"][2]["rows"][0].pop("first_slot")),
        "unknown kind": broken(lambda d: d["caches"][0].__setitem__("kind", "paged")),
        "static without max_cache_len": broken(lambda d: d["caches"][1].pop("max_cache_len")),
        "window on a dynamic cache": broken(lambda d: d["caches"][0].__setitem__("window", 4)),
        "negative block id": broken(lambda d: d["caches"][0]["rows"][0]["blocks"].__setitem__(0, -1)),
        "unknown pool field": broken(lambda d: d["pool"].__setitem__("fragmentation", 0.5)),
        "missing free list": broken(lambda d: d["pool"].pop("free_list")),
        "page layout auto": broken(lambda d: d["layout"].__setitem__("page_layout", "auto")),
        "missing prefix_cache": broken(lambda d: d.pop("prefix_cache")),
        "format version 3": broken(lambda d: d["file"].__setitem__("format_version", 3)),
        "a row without groups": broken(lambda d: d["caches"][0]["rows"][0].pop("groups")),
        "a layout without layer_windows": broken(lambda d: d["layout"].pop("layer_windows")),
        "a group without a window": broken(lambda d: d["caches"][0]["rows"][0]["groups"].append(
            {"group": 1, "layers": [1], "first_slot": 0, "end_slot": 0, "blocks": [],
             "shared": []})),
        "a hash as a number": broken(lambda d: d["prefix_cache"]["entries"].append(
            {**cached_entry, "hash": 12345})),
        "an entry without lru_position": broken(lambda d: d["prefix_cache"]["entries"].append(
            {k: v for k, v in cached_entry.items() if k != "lru_position"})),
    }
    for what, doc in wrong.items():
        if validator.is_valid(doc):
            failures.append(f"the schema accepts a document with {what}")

    for f in failures:
        print(f, file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"{len(runs)} outputs valid against {schema_path.name}, {len(wrong)} broken ones refused")


if __name__ == "__main__":
    main()
