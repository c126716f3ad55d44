#!/usr/bin/env python3
"""No module of a crate imports another that (directly or in a loop)
imports it back: ARCHITECTURE.md's layering rule, checked on every CI run.

Reads each crate's `src/` as text: a file is a module (`a.rs` and
`a/mod.rs` are `a`, `a/b.rs` is `a::b`), and an edge is a path into
another module of the same crate (`crate::x::...` or `super::...`).
Edges to and from the crate root (lib.rs / main.rs, which only declares
and re-exports) and test modules (`#[cfg(test)]` to the end of the file)
are left out. Prints every cycle and exits 1 when there is one.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
GROUP = re.compile(r"\b(crate|super)::\{([^;]*?)\};", re.S)


def module_of(src: Path, f: Path) -> tuple:
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
        parts = parts[:-1]
    return tuple(parts)


def targets(text: str, here: tuple):
    """Module paths (as tuples) that `text` names."""
    # `super` in `a/mod.rs` is `a`'s parent, as in `a.rs`.
    parent = here[:-1]
    for m in GROUP.finditer(text):
        base = () if m.group(1) == "crate" else parent
        for item in re.split(r",(?![^{]*\})", m.group(2)):
            item = item.strip().split(" as ")[0].replace("{", "").replace("}", "")
            segs = [s for s in item.split("::") if s and s != "self"]
            if segs:
                yield base + tuple(segs)
    for m in PATH.finditer(text):
        if m.group(2) == "::{":
            continue
        base = () if m.group(1) == "crate" else parent
        yield base + tuple(s for s in m.group(2).split("::") if s)


def crate_graph(src: Path):
    files = sorted(src.rglob("*.rs"))
    mods = {module_of(src, f): f for f in files}
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        if not m:
            continue
        text = f.read_text()
        cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+", text)
        if cut:
            text = text[: cut.start()]
        # Doc links and comments name modules without importing them.
        text = re.sub(r"//[^\n]*", "", text)
        for path in targets(text, m):
            # The longest prefix that is a module of this crate.
            for n in range(len(path), 0, -1):
                t = path[:n]
                if t in mods:
                    if t != m and t and not m[: len(t)] == t:
                        graph[m].add(t)
                    break
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    found = 0
    crates = sorted(p.parent for p in ROOT.glob("*/src") if (p.parent / "Cargo.toml").exists())
    for crate in crates:
        for comp in cycles(crate_graph(crate / "src")):
            found += 1
            names = ", ".join("::".join(m) for m in comp)
            print(f"{crate.name}: modules that import each other: {names}")
    print(f"module cycles: {found} in {len(crates)} crates")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
