#!/usr/bin/env python3
"""Prints the tables of docs/benchmarks.md from the output of
`cargo bench --bench acquire`.

Usage: python3 benches/bench_table.py [CRITERION_DIR]   (default: target/criterion for the
estimates, benches/target/criterion for the pairs)

Medians come from criterion (<group>/<case>/[<param>/]new/estimates.json and
benchmark.json); ratios come from the interleaved pairs the bench stores in
<CRITERION_DIR>/pairs/*.json, which are robust to load from other processes.
"""

import json
import os
import sys

# group -> the case every other case is compared with
REFERENCE = {
    "path_acquire": "raw_open_fstat_fstatfs_flock_close",
    "path_create": "raw_create_fstat_fstatfs_flock_close_unlink",
    "reused_fd": "raw_flock_flock",
    "shared_holders": None,  # flockguard_X against raw_X
    "transitions": None,  # flockguard_X against raw_X
}

# (group, flockguard case, baseline case, bound)
TARGETS = [
    ("path_acquire", "flockguard", "raw_open_fstat_fstatfs_flock_close", 1.05),
    ("path_acquire", "flockguard_remote_allow", "raw_open_fstat_flock_close", 1.05),
    ("reused_fd", "flockguard", "raw_flock_flock", 1.05),
]

# The same cases against baselines that make the getpid(2) calls of
# flockguard's fork check: what flockguard adds beyond its system calls.
FLOORS = [
    ("path_acquire", "flockguard", "raw_open_statx_getpid_flock_close"),
    ("path_acquire", "flockguard_remote_allow", "raw_open_fstat_getpid_flock_close"),
    ("reused_fd", "flockguard", "raw_getpid_flock_getpid_flock"),
]


def load_medians(root):
    rows = {}
    order = []
    for dirpath, _, files in sorted(os.walk(root)):
        if os.path.basename(dirpath) != "new":
            continue
        if "benchmark.json" not in files or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        if meta["group_id"].startswith("paired_"):
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        key = (meta["group_id"], meta.get("value_str") or "", meta["function_id"])
        rows[key] = est["median"]["point_estimate"]
        order.append(key)
    return rows


def load_pairs(root):
    pairs = {}
    base = os.path.join(root, "pairs")
    if os.path.isdir(base):
        for name in sorted(os.listdir(base)):
            if name.endswith(".json"):
                with open(os.path.join(base, name)) as f:
                    p = json.load(f)
                pairs[(p["group"], p["param"], p["a"], p["b"])] = p
    return pairs


def ns(v):
    return f"{v:,.0f}"


def reference(group, case):
    ref = REFERENCE.get(group)
    if ref is None and case.startswith("flockguard_"):
        return "raw_" + case[len("flockguard_"):]
    return ref


def main():
    # Criterion writes its estimates under the workspace's target; the
    # bench binary, run in its package's directory, writes the pairs under
    # benches/target unless CARGO_TARGET_DIR or CRITERION_HOME says
    # otherwise. Each is taken from the first directory that has it.
    roots = [sys.argv[1]] if len(sys.argv) > 1 else [
        os.path.join("target", "criterion"),
        os.path.join("benches", "target", "criterion"),
    ]
    root = roots[0]
    medians, pairs = {}, {}
    for r in roots:
        medians = medians or load_medians(r)
        pairs = pairs or load_pairs(r)
    if not medians:
        sys.exit(f"no criterion results under {root}; run `cargo bench --bench acquire` first")
    groups = [g for g in REFERENCE if any(k[0] == g for k in medians)]
    for group in groups:
        print(f"\n### {group}\n")
        params = sorted({k[1] for k in medians if k[0] == group}, key=lambda v: (len(v), v))
        has_param = params != [""]
        head = "| case |" + (" N |" if has_param else "")
        print(head + " median (ns) | ratio to | paired ratio | quartiles |")
        print("|---|" + ("---:|" if has_param else "") + "---:|---|---:|---|")
        for param in params:
            cases = [k[2] for k in medians if k[0] == group and k[1] == param]
            ref = REFERENCE.get(group)
            cases.sort(key=lambda c: (c != ref, not c.startswith("flockguard"), not c.startswith("raw")))
            for case in cases:
                median = medians[(group, param, case)]
                base = reference(group, case)
                p = pairs.get((group, param, case, base))
                cells = ["(reference)" if case == base else (base or ""), "", ""]
                if p:
                    cells[1:] = [f"{p['ratio']:.3f}", f"{p['q1']:.3f}..{p['q3']:.3f}"]
                col = f" {param} |" if has_param else ""
                print(f"| {case} |{col} {ns(median)} | {cells[0]} | {cells[1]} | {cells[2]} |")
        extra = [p for k, p in pairs.items()
                 if k[0] == group and k[3] != reference(group, k[2])]
        if extra:
            print("\nFurther pairs:\n")
            for p in extra:
                print(f"- {p['a']} / {p['b']}: {ns(p['a_ns'])} / {ns(p['b_ns'])} ns = "
                      f"**{p['ratio']:.3f}** (quartiles {p['q1']:.3f}..{p['q3']:.3f})")
    print("\n### targets\n")
    for group, a, b, bound in TARGETS:
        p = pairs.get((group, "", a, b))
        if p is None:
            print(f"- {group}: {a} / {b}: not measured")
            continue
        verdict = "met" if p["ratio"] <= bound else "missed"
        print(f"- {group}: {a} / {b} = **{p['ratio']:.3f}** "
              f"({ns(p['a_ns'])} / {ns(p['b_ns'])} ns; target <= {bound}: {verdict})")
    print("\n### against the same system calls with the fork check's getpid\n")
    for group, a, b in FLOORS:
        p = pairs.get((group, "", a, b))
        if p is None:
            print(f"- {group}: {a} / {b}: not measured")
            continue
        print(f"- {group}: {a} / {b} = **{p['ratio']:.3f}** "
              f"({ns(p['a_ns'])} / {ns(p['b_ns'])} ns)")


if __name__ == "__main__":
    main()
