#!/usr/bin/env python3
"""Module-level import graph of src/ and its cycles (strongly connected components).

A node is a source file (`src/dip/recon.rs` -> `dip::recon`, `src/dip/mod.rs` -> `dip`). An edge
a -> b means a names an item of b through a path: `crate::…`, `super::…`, `self::…` or a
sibling brought in by `use super::{…}`. Paths are resolved to the longest existing module.
`mod x;` declarations and `pub use` re-exports in a parent are not dependencies. Prints every
cycle (SCC with more than one module) and exits 1 if there is one.

    python3 scripts/import_cycles.py [src]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel in (["lib"], ["main"]):
            rel = []
        if rel and rel[0] == "cli" or rel == [] or rel[0] == "main":
            continue  # the binary's modules and the crate root are above everything
        mods["::".join(rel)] = p
known = set(mods)


def resolve(parts):
    for n in range(len(parts), 0, -1):
        m = "::".join(parts[:n])
        if m in known:
            return m
    return None


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def strip_tests(text):
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


edges = {m: set() for m in known}
path_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
group_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*?)\}", re.S)
for m, p in mods.items():
    text = strip_tests(strip_comments(open(p).read()))
    # re-exports and declarations are not dependencies
    text = re.sub(r"\bpub(\([^)]*\))?\s+use\s[^;]*;", "", text)
    here = m.split("::") if m else []
    is_mod = p.endswith("mod.rs") or p.endswith("lib.rs")
    base_self = here if is_mod else here[:-1]

    def absolute(kind, tail):
        if kind == "crate":
            return tail
        if kind == "self":
            return base_self + tail
        return (base_self[:-1] if True else []) + tail  # super

    found = []
    for kind, prefix, inner in group_re.findall(text):
        pre = [t for t in prefix.split("::") if t]
        for item in re.split(r",", inner):
            item = item.strip().split(" as ")[0].strip()
            if not item or item == "self":
                found.append((kind, pre))
                continue
            first = re.split(r"::|\{", item)[0].strip()
            if first:
                found.append((kind, pre + [first]))
    for kind, tail in path_re.findall(text):
        found.append((kind, [t for t in tail.split("::") if t]))
    # bare paths to this module's own children (`use recon::X;`, `recon::run(…)` in mod.rs)
    scope = here if is_mod else None
    if scope is not None:
        for c in known:
            cs = c.split("::") if c else []
            if len(cs) == len(scope) + 1 and cs[:-1] == scope:
                if re.search(r"(?<![:\w])" + cs[-1] + r"::", text):
                    edges[m].add(c)
    for kind, tail in found:
        # `super::super::x`
        base = absolute(kind, [])
        parts = list(tail)
        while parts and parts[0] == "super":
            parts.pop(0)
            base = base[:-1]
        target = resolve(base + parts)
        if target is not None and target != m:
            edges[m].add(target)

# Folder level too (`--level 2`: dip::recon -> dip, spektron::model::lora -> spektron::model).
level = int(os.environ.get("LEVEL", "0"))
if level:
    def fold(m):
        return "::".join(m.split("::")[:level])
    folded = {}
    for a, bs in edges.items():
        folded.setdefault(fold(a), set()).update(fold(b) for b in bs if fold(b) != fold(a))
    edges = folded
    known = set(edges)

index, low, stack, on, sccs = {}, {}, [], set(), []
sys.setrecursionlimit(10000)


def strong(v, counter=[0]):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(comp)


for v in sorted(known):
    if v not in index:
        strong(v)
cycles = [sorted(c) for c in sccs if len(c) > 1]
print(f"{len(known)} modules, {sum(len(e) for e in edges.values())} edges")
for c in cycles:
    print("cycle:", " <-> ".join(c))
    for a in c:
        for b in sorted(edges[a] & set(c)):
            print(f"    {a} -> {b}")
sys.exit(1 if cycles else 0)
