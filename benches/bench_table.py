#!/usr/bin/env python3
"""Prints the median and ratio table of `cargo bench --bench acquire` from
criterion's output (target/criterion/**/new/{benchmark,estimates}.json).

Usage: python3 benches/bench_table.py [CRITERION_DIR]
Each row's ratio is to the reference baseline of its group (and of its
parameter, for parameterised groups). The targets at the end come from the
`paired` group (target/criterion/paired/*/pair.json), which interleaves
flockguard and its baseline so that load from other processes hits both.
"""

import json
import os
import sys

# group -> function id of the reference baseline (per parameter value)
REFERENCE = {
    "path_acquire": "raw_open_fstat_fstatfs_flock_close",
    "reused_fd": "raw_flock_ex_nb_flock_un",
    "shared_holders": None,  # flockguard_X is compared with raw_X
    "transitions": None,  # flockguard_X is compared with raw_X
    "paired": "",  # rounds of interleaved blocks; see the targets instead
}

# paired name -> (what flockguard runs, what the baseline runs, bound)
TARGETS = {
    "path": ("try_flock + drop", "open+fstat+fstatfs+flock+close", 1.05),
    "path_remote_allow": ("RemoteFs::Allow open + try_lock + drop",
                          "open+fstat+flock+close", 1.05),
    "reused": ("try_lock + unlock", "flock(EX\\|NB)+flock(UN)", 1.05),
    "path_remote_allow_vs_getpid_floor": ("RemoteFs::Allow open + try_lock + drop",
                                          "open+fstat+getpid+flock+close", None),
    "reused_vs_getpid_floor": ("try_lock + unlock", "flock(EX\\|NB)+getpid+flock(UN)", None),
}


def load(root):
    rows = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) != "new":
            continue
        if "benchmark.json" not in files or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        key = (meta["group_id"], meta.get("value_str") or "", meta["function_id"])
        rows[key] = est["median"]["point_estimate"]
    return rows


def load_pairs(root):
    pairs = {}
    base = os.path.join(root, "paired")
    if not os.path.isdir(base):
        return pairs
    for name in os.listdir(base):
        path = os.path.join(base, name, "pair.json")
        if os.path.isfile(path):
            with open(path) as f:
                pairs[name] = json.load(f)
    return pairs


def baseline_for(group, function):
    ref = REFERENCE.get(group)
    if ref is not None:
        return ref
    if function.startswith("flockguard_"):
        return "raw_" + function[len("flockguard_"):]
    return None


def fmt_ns(ns):
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "criterion")
    rows = load(root)
    if not rows:
        sys.exit(f"no criterion results under {root}; run `cargo bench --bench acquire` first")
    groups = []
    for g, _, _ in sorted(rows):
        if g not in groups:
            groups.append(g)
    order = list(REFERENCE) + [g for g in groups if g not in REFERENCE]
    for group in [g for g in order if g in groups and g != "paired"]:
        print(f"\n### {group}\n")
        print("| bench | param | median (ns) | baseline | ratio |")
        print("|---|---|---:|---|---:|")
        keys = [k for k in rows if k[0] == group]
        params = sorted({k[1] for k in keys}, key=lambda v: (len(v), v))
        for param in params:
            for _, _, function in [k for k in keys if k[1] == param]:
                median = rows[(group, param, function)]
                base = baseline_for(group, function)
                base_ns = rows.get((group, param, base)) if base else None
                if base_ns and base != function:
                    ratio, base_name = f"{median / base_ns:.3f}", base
                elif base == function:
                    ratio, base_name = "1.000", "(reference)"
                else:
                    ratio, base_name = "", ""
                print(f"| {function} | {param} | {fmt_ns(median)} | {base_name} | {ratio} |")
    pairs = load_pairs(root)
    if not pairs:
        return
    print("\n### paired (interleaved) ratios\n")
    print("| pair | flockguard | median (ns) | baseline | median (ns) | ratio | quartiles | target |")
    print("|---|---|---:|---|---:|---:|---|---|")
    for name in list(TARGETS) + sorted(set(pairs) - set(TARGETS)):
        p = pairs.get(name)
        if p is None:
            continue
        ours, theirs, bound = TARGETS.get(name, ("", "", None))
        verdict = ""
        if bound is not None:
            verdict = f"<= {bound}: " + ("met" if p["ratio"] <= bound else "missed")
        print(f"| {name} | {ours} | {fmt_ns(p['flockguard_ns'])} | {theirs} "
              f"| {fmt_ns(p['baseline_ns'])} | {p['ratio']:.3f} "
              f"| {p['q1']:.3f}..{p['q3']:.3f} | {verdict} |")


if __name__ == "__main__":
    main()
