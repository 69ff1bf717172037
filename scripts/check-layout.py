#!/usr/bin/env python3
"""Enforce ferrolm's source layout rules (run by `make test`; standard library only).

  1. No file in crates/*/src is over 600 lines, not counting #[cfg(test)] modules
     (inline `mod NAME { .. }` or whole files declared by `#[cfg(test)] mod NAME;`).
  2. No import cycles within a crate: neither between files nor between top-level
     modules (src/<name>.rs or src/<name>/). Edges come from `use` trees and inline
     `crate::`/`super::`/`self::`/child-module paths; `mod x;` and `pub use` of a
     module's own children are not edges, paths through such re-exports are followed
     to the defining file, and test code is left out.
  3. crates/server, crates/formats and crates/protocol never name candle (no
     candle_core/candle_nn in src/ or tests/, no candle dependency in their Cargo.toml);
     crates/formats and crates/protocol (fuzzed alone, in fuzz/) do not depend on
     ferrolm-engine either, which would bring candle in.
  4. When docs/architecture.md has a ```layers block (one layer per line, lowest first,
     module names separated by spaces), every top-level module of crates/engine is in it
     exactly once, no name in it is not such a module, and no top-level module edge (as in
     rule 2) goes from a lower layer to a higher one; edges within a layer are allowed.

    python3 scripts/check-layout.py [--root DIR] [--graph]

--graph prints each crate's top-level module dependency edges (for docs) on stdout.
Exits 1 with one message per violation, 0 with a one-line summary.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINES = 600
SERVER_CRATE = "server"
# Crates that never name candle, with the workspace packages each must not depend on.
CANDLE_FREE = {SERVER_CRATE: (), "formats": ("ferrolm-engine",), "protocol": ("ferrolm-engine",)}
ENGINE_CRATE = "engine"
ARCH_DOC = Path("docs/architecture.md")
_LAYERS_BLOCK = re.compile(r"^[ \t]*```[ \t]*layers[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
CANDLE_PATH = re.compile(r"(?<![\w$])candle_(?:core|nn)\b")

# ---------------------------------------------------------------------------------------
# Lexing: blank out comments, string/char literal contents (newlines kept, so offsets and
# line numbers match the original text).

_TOKEN = re.compile(
    r"""(?P<lc>//)|(?P<bc>/\*)"""
    r"""|(?P<raw>(?<![\w$])(?:br|cr|r)(?P<hashes>\#*)")"""
    r"""|(?P<str>(?<![\w$])[bc]?"|")"""
    r"""|(?P<chr>')"""
)
_STR_BODY = re.compile(r'(?:[^"\\]|\\.)*"', re.S)
_BLOCK_TOKEN = re.compile(r"/\*|\*/")


def _blank(s: str) -> str:
    return re.sub(r"[^\n]", " ", s)


def strip_code(text: str) -> str:
    """`text` with comments and literal contents replaced by spaces (same length)."""
    out: list[str] = []
    pos = 0
    n = len(text)
    while True:
        m = _TOKEN.search(text, pos)
        if not m:
            out.append(text[pos:])
            break
        start = m.start()
        out.append(text[pos:start])
        if m.group("lc"):
            end = text.find("\n", start)
            end = n if end < 0 else end
            out.append(_blank(text[start:end]))
            pos = end
        elif m.group("bc"):
            depth, i = 1, m.end()
            while depth and i < n:
                t = _BLOCK_TOKEN.search(text, i)
                if not t:
                    i = n
                    break
                depth += 1 if t.group() == "/*" else -1
                i = t.end()
            out.append(_blank(text[start:i]))
            pos = i
        elif m.group("raw") is not None:
            close = '"' + m.group("hashes")
            end = text.find(close, m.end())
            if end < 0:
                out.append(_blank(text[start:]))
                pos = n
            else:
                out.append(text[start:m.end()] + _blank(text[m.end():end]) + close)
                pos = end + len(close)
        elif m.group("str") is not None:
            b = _STR_BODY.match(text, m.end())
            end = b.end() if b else n
            out.append(text[start:m.end()] + _blank(text[m.end():end - 1]) + text[end - 1:end])
            pos = end
        else:  # a quote: char literal or lifetime/label
            if start + 1 < n and text[start + 1] == "\\":
                end = text.find("'", start + 3)
                end = n if end < 0 else end + 1
                out.append(_blank(text[start:end]))
                pos = end
            elif start + 2 < n and text[start + 2] == "'" and text[start + 1] != "\n":
                out.append("   ")
                pos = start + 3
            else:  # lifetime or loop label
                out.append("'")
                pos = start + 1
    return "".join(out)


def match_braces(code: str) -> dict[int, int]:
    """Offsets of each `{` in stripped code mapped to its closing `}`."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"[{}]", code):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def matching_close(code: str, i: int, open_: str, close: str) -> int:
    depth = 0
    for j in range(i, len(code)):
        c = code[j]
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


# ---------------------------------------------------------------------------------------
# cfg(test) detection.

_CFG_ATTR = re.compile(r"#\s*(!?)\s*\[\s*cfg\s*\(")
_ATTR = re.compile(r"\s*#\s*\[")
_ITEM_KW = re.compile(r"\s*(?:pub\s*(?:\([^)]*\))?\s*)?(?:unsafe\s+)?(\w+)")


def _cfg_requires_test(expr: str) -> bool:
    """Whether a cfg predicate can only hold under `test`."""
    expr = expr.strip()
    if expr == "test":
        return True
    m = re.fullmatch(r"(all|any|not)\s*\((.*)\)", expr, re.S)
    if not m:
        return False
    args, depth, cur = [], 0, ""
    for c in m.group(2):
        if c == "," and depth == 0:
            args.append(cur)
            cur = ""
            continue
        depth += c == "("
        depth -= c == ")"
        cur += c
    if cur.strip():
        args.append(cur)
    if m.group(1) == "all":
        return any(_cfg_requires_test(a) for a in args)
    if m.group(1) == "any":
        return bool(args) and all(_cfg_requires_test(a) for a in args)
    return False


@dataclass
class TestRange:
    start: int  # offset of the #[cfg(test)] attribute
    end: int  # offset of the item's last character
    is_mod: bool


def test_ranges(code: str, braces: dict[int, int]) -> tuple[list[TestRange], bool]:
    """Items gated by cfg(test), and whether the whole file is (`#![cfg(test)]`)."""
    ranges: list[TestRange] = []
    whole_file = False
    for m in _CFG_ATTR.finditer(code):
        paren = m.end() - 1
        close = matching_close(code, paren, "(", ")")
        if not _cfg_requires_test(code[paren + 1:close]):
            continue
        if m.group(1):  # inner attribute
            whole_file = True
            continue
        i = code.find("]", close) + 1
        while True:  # further attributes on the same item
            a = _ATTR.match(code, i)
            if not a:
                break
            i = matching_close(code, a.end() - 1, "[", "]") + 1
        kw = _ITEM_KW.match(code, i)
        word = kw.group(1) if kw else ""
        j = kw.end() if kw else i
        end = len(code) - 1
        semi_only = word in ("use", "const", "static", "type", "let", "extern")
        depth = 0
        while j < len(code):
            c = code[j]
            if c in "([":
                depth += 1
            elif c in ")]":
                depth -= 1
            elif c == ";" and depth <= 0:
                end = j
                break
            elif c == "{" and depth <= 0 and not semi_only:
                end = braces.get(j, len(code) - 1)
                break
            j += 1
        ranges.append(TestRange(m.start(), end, word == "mod"))
    return ranges, whole_file


# ---------------------------------------------------------------------------------------
# Per-file facts.

_MOD_DECL = re.compile(r"(?<![\w$])(?:pub\s*(?:\([^)]*\))?\s*)?mod\s+(?:r#)?(\w+)\s*([;{])")
_USE = re.compile(r"(?<![\w$])(?:(pub)\b\s*(\([^)]*\))?\s*)?use\s+([^;]*);")
_PATH = re.compile(r"(?<![\w$:])(\$?[A-Za-z_]\w*)((?:\s*::\s*[A-Za-z_]\w*)+)")
_USE_TOKEN = re.compile(r"::|[{},*]|\$?(?:r#)?[A-Za-z_]\w*")


@dataclass
class UseItem:
    segs: tuple[str, ...]
    alias: str | None
    glob: bool
    offset: int
    public: bool
    scope: tuple[str, ...]


@dataclass(eq=False)
class SrcFile:
    crate: str
    path: Path  # absolute
    rel: str  # relative to the root, for messages
    module: tuple[str, ...]
    text: str
    code: str
    lines: list[str]
    tests: list[TestRange]
    test_file: bool
    inline_mods: list[tuple[int, int, tuple[str, ...], bool]] = field(default_factory=list)
    # (scope, name, cfg(test)-gated, ";" or "{", offset)
    mod_decls: list[tuple[tuple[str, ...], str, bool, str, int]] = field(default_factory=list)
    uses: list[UseItem] = field(default_factory=list)
    paths: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = field(default_factory=list)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    test_only: bool = False
    bin_root: bool = False
    line_starts: list[int] = field(default_factory=list)

    def in_test(self, off: int) -> bool:
        return any(r.start <= off <= r.end for r in self.tests)

    def scope_at(self, off: int) -> tuple[str, ...]:
        best: tuple[str, ...] = self.module
        for start, end, scope, _ in self.inline_mods:
            if start <= off <= end and len(scope) > len(best):
                best = scope
        return best

    def line_of(self, off: int) -> int:
        lo, hi = 0, len(self.line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.line_starts[mid] <= off:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    def where(self, off: int) -> str:
        ln = self.line_of(off)
        return f"{self.rel}:{ln}: {self.lines[ln - 1].strip()}"

    def non_test_lines(self) -> int:
        total = len(self.lines)
        spans = sorted((self.line_of(r.start), self.line_of(r.end)) for r in self.tests if r.is_mod)
        covered, last = 0, 0
        for a, b in spans:
            a = max(a, last + 1)
            if b >= a:
                covered += b - a + 1
                last = b
        return total - covered


def parse_use_tree(tree: str) -> list[tuple[tuple[str, ...], str | None, bool]]:
    toks = _USE_TOKEN.findall(tree)
    out: list[tuple[tuple[str, ...], str | None, bool]] = []

    def emit(segs: list[str], alias: str | None, glob: bool) -> None:
        if not glob and len(segs) > 1 and segs[-1] == "self":
            segs = segs[:-1]
        if segs:
            out.append((tuple(segs), alias if alias else (None if glob else segs[-1]), glob))

    def parse(i: int, prefix: list[str]) -> int:
        segs = list(prefix)
        if i < len(toks) and toks[i] == "::":
            if not segs:
                segs.append("::")
            i += 1
        while i < len(toks):
            t = toks[i]
            if t == "{":
                i += 1
                while i < len(toks) and toks[i] != "}":
                    i = parse(i, segs)
                    if i < len(toks) and toks[i] == ",":
                        i += 1
                return i + 1
            if t == "*":
                emit(segs, None, True)
                return i + 1
            if t in (",", "}", "::"):
                return i
            segs.append(t[2:] if t.startswith("r#") else t)
            i += 1
            if i < len(toks) and toks[i] == "::":
                i += 1
                continue
            alias = None
            if i + 1 < len(toks) and toks[i] == "as":
                alias = toks[i + 1]
                i += 2
            emit(segs, alias, False)
            return i
        return i

    parse(0, [])
    return out


def module_of(src_dir: Path, path: Path) -> tuple[str, ...]:
    parts = list(path.relative_to(src_dir).with_suffix("").parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts and parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def load_file(root: Path, crate: str, src_dir: Path, path: Path) -> SrcFile:
    text = path.read_text(encoding="utf-8", errors="replace")
    code = strip_code(text)
    braces = match_braces(code)
    tests, whole = test_ranges(code, braces)
    f = SrcFile(crate, path, str(path.relative_to(root)), module_of(src_dir, path), text, code,
                text.splitlines() or [""], tests, whole)
    f.bin_root = path.parent == src_dir / "bin"
    f.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    if text.endswith("\n"):
        f.line_starts.pop()
    # inline modules (innermost scope wins; nested ones found by containment)
    raw_inline = []
    for m in _MOD_DECL.finditer(code):
        if m.group(2) == "{":
            brace = m.end() - 1
            raw_inline.append((m.start(), braces.get(brace, len(code) - 1), m.group(1),
                               f.in_test(m.start())))
    for start, end, name, gated in raw_inline:
        outer = [r for r in raw_inline if r[0] < start and r[1] >= end]
        outer.sort()
        scope = f.module + tuple(r[2] for r in outer) + (name,)
        f.inline_mods.append((start, end, scope, gated))
    for m in _MOD_DECL.finditer(code):
        f.mod_decls.append((f.scope_at(m.start() - 1 if m.group(2) == "{" else m.start()),
                            m.group(1), f.in_test(m.start()), m.group(2), m.start()))
    # use trees; mask them before scanning inline paths
    masked = list(code)
    for m in _USE.finditer(code):
        vis = (m.group(1) or "") + (m.group(2) or "")
        public = bool(m.group(1)) and re.sub(r"\s", "", vis) != "pub(self)"
        scope = f.scope_at(m.start())
        for segs, alias, glob in parse_use_tree(m.group(3)):
            f.uses.append(UseItem(segs, alias, glob, m.start(), public, scope))
        for i in range(m.start(), m.end()):
            if masked[i] != "\n":
                masked[i] = " "
    masked_code = "".join(masked)
    for m in _PATH.finditer(masked_code):
        segs = (m.group(1),) + tuple(s.strip() for s in m.group(2).split("::")[1:])
        f.paths.append((segs, m.start(), f.scope_at(m.start())))
    return f


# ---------------------------------------------------------------------------------------
# Crate model: modules, re-exports, resolution.

@dataclass(eq=False)
class Module:
    file: SrcFile
    inline: bool
    test: bool
    reexports: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    globs: list[tuple[str, ...]] = field(default_factory=list)


class Crate:
    def __init__(self, name: str, files: list[SrcFile]):
        self.name = name
        self.files = files
        self.modules: dict[tuple[str, ...], Module] = {}
        self.problems: list[str] = []  # module/file mismatches (the graph is guesswork there)
        for f in files:
            if f.bin_root:
                continue
            if f.module in self.modules and f.module:
                self.problems.append(f"  {self.modules[f.module].file.rel} and {f.rel} both define "
                                     f"module {'::'.join(('crate',) + f.module)}")
            if f.module not in self.modules or f.path.name == "lib.rs":
                self.modules[f.module] = Module(f, False, f.test_file)
        for f in files:
            for _, _, scope, gated in f.inline_mods:
                self.modules.setdefault(scope, Module(f, True, gated))
        for f in files:
            if "#[path" in f.code.replace(" ", ""):
                continue
            for scope, name, _, kind, off in f.mod_decls:
                if kind == ";" and scope + (name,) not in self.modules:
                    self.problems.append(f"  {f.where(off)}  -- no file for this module")
        # test-only files: declared under cfg(test), or below a test-only module
        gated_decl = {}
        for f in files:
            for scope, name, gated, _, _ in f.mod_decls:
                key = scope + (name,)
                gated_decl[key] = gated_decl.get(key, True) and gated
        for key in sorted(self.modules, key=len):
            parent = self.modules.get(key[:-1]) if key else None
            if key and (gated_decl.get(key, False) or (parent is not None and parent.test)):
                self.modules[key].test = True
        for f in files:
            f.test_only = self.modules[f.module].test if f.module in self.modules else f.test_file
            if f.test_file:
                f.test_only = True
        # module aliases (`use crate::sampling;` then `sampling::x`), then re-exports
        for f in files:
            for u in f.uses:
                if u.glob or not u.alias or u.alias == "_":
                    continue
                a = self.absolute(u.segs, u.scope, f)
                if a is not None and a in self.modules:
                    f.aliases[u.alias] = a
        for f in files:
            if f.test_only:
                continue
            for u in f.uses:
                if not u.public or f.in_test(u.offset):
                    continue
                a = self.absolute(u.segs, u.scope, f)
                mod = self.modules.get(u.scope)
                if a is None or mod is None:
                    continue
                if u.glob:
                    mod.globs.append(a)
                elif u.alias and u.alias != "_":
                    mod.reexports.setdefault(u.alias, []).append(a)

    def absolute(self, segs: tuple[str, ...], scope: tuple[str, ...], f: SrcFile):
        first = segs[0]
        if first in ("crate", "$crate"):
            base, rest = (), segs[1:]
        elif first in ("self", "super"):
            base, rest = scope, segs
        elif scope + (first,) in self.modules:
            base, rest = scope, segs
        elif first in f.aliases:
            base, rest = f.aliases[first], segs[1:]
        else:
            return None  # another crate, a local item, or `::x`
        out = list(base)
        for s in rest:
            if s == "super":
                if not out:
                    return None
                out.pop()
            elif s != "self":
                out.append(s)
        return tuple(out)

    def _defines(self, key: tuple[str, ...], name: str) -> bool:
        mod = self.modules[key]
        if name in mod.reexports or key + (name,) in self.modules:
            return True
        return re.search(r"\b(?:fn|struct|enum|trait|type|const|static|union)\s+" + re.escape(name)
                         + r"\b|macro_rules!\s*" + re.escape(name) + r"\b", mod.file.code) is not None

    def resolve(self, path: tuple[str, ...], seen: frozenset = frozenset()) -> set[SrcFile]:
        """The files that define what `path` (absolute, in this crate) names."""
        cur: tuple[str, ...] = ()
        i = 0
        while i < len(path) and cur + (path[i],) in self.modules:
            cur = cur + (path[i],)
            i += 1
        if cur not in self.modules:
            return set()
        mod = self.modules[cur]
        if i == len(path):
            return {mod.file}
        item = path[i]
        if (cur, item) in seen:
            return {mod.file}
        seen = seen | {(cur, item)}
        below = lambda t: len(t) > len(cur) and t[:len(cur)] == cur  # noqa: E731
        out: set[SrcFile] = set()
        for target in mod.reexports.get(item, []):
            out |= self.resolve(target, seen) if below(target) else {mod.file}
        if not out and item not in mod.reexports:
            for g in mod.globs:
                if below(g) and g in self.modules and self._defines(g, item):
                    out |= self.resolve(g + (item,), seen)
        return out or {mod.file}


# ---------------------------------------------------------------------------------------
# Graph building and cycles.

def descendant(child: tuple[str, ...], parent: tuple[str, ...]) -> bool:
    return len(child) > len(parent) and child[:len(parent)] == parent


def file_edges(crate: Crate) -> dict[tuple[SrcFile, SrcFile], str]:
    edges: dict[tuple[SrcFile, SrcFile], tuple[int, str]] = {}

    def add(src: SrcFile, dst: SrcFile, off: int) -> None:
        if dst is src or dst.test_only:
            return
        key = (src, dst)
        if key not in edges or off < edges[key][0]:
            edges[key] = (off, src.where(off))

    for f in crate.files:
        if f.test_only or f.bin_root:
            continue  # tests may import anything; src/bin/*.rs are crates of their own
        path_heads = {segs[0] for segs, off, _ in f.paths if not f.in_test(off)}
        for u in f.uses:
            if f.in_test(u.offset):
                continue
            a = crate.absolute(u.segs, u.scope, f)
            if a is None:
                continue
            # `use crate::sampling;` used as `sampling::x`: the uses of the alias count
            if (not u.glob and not u.public and a in crate.modules and u.alias in path_heads
                    and f.aliases.get(u.alias) == a):
                continue
            for dst in crate.resolve(a):
                if u.public and descendant(dst.module, f.module):
                    continue  # a module re-exporting its own children
                add(f, dst, u.offset)
        for segs, off, scope in f.paths:
            if f.in_test(off):
                continue
            a = crate.absolute(segs, scope, f)
            if a is None:
                continue
            for dst in crate.resolve(a):
                add(f, dst, off)
    return {k: v[1] for k, v in edges.items()}


def sccs(nodes: list, succ: dict) -> list[list]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict = {}
    low: dict = {}
    on: set = set()
    stack: list = []
    out: list[list] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ.get(w, ()))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
    return out


def cycles(edges: dict, label) -> list[list[str]]:
    """Each SCC with more than one member, as message lines."""
    succ: dict = {}
    nodes: list = []
    for a, b in edges:
        succ.setdefault(a, []).append(b)
        for n in (a, b):
            if n not in nodes:
                nodes.append(n)
    for k in succ:
        succ[k].sort(key=label)
    nodes.sort(key=label)
    msgs = []
    for comp in sccs(nodes, succ):
        if len(comp) < 2:
            continue
        members = set(comp)
        lines = ["  cycle: " + ", ".join(sorted(label(n) for n in comp))]
        mutual = sorted({tuple(sorted((label(a), label(b)))) for a, b in edges
                         if a in members and (b, a) in edges})
        if mutual and len(comp) > 2:
            lines.append("    (importing each other: "
                         + ", ".join(f"{a} <-> {b}" for a, b in mutual) + ")")
        for (a, b), example in sorted(edges.items(), key=lambda e: (label(e[0][0]), label(e[0][1]))):
            if a in members and b in members:
                lines.append(f"    {label(a)} -> {label(b)}    ({example})")
        msgs.append(lines)
    msgs.sort()
    return msgs


def top_module(f: SrcFile) -> str:
    return f.module[0] if f.module else f"crate root ({f.path.name})"


def folder_edges(fedges: dict) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for (a, b), example in sorted(fedges.items(), key=lambda e: (e[0][0].rel, e[0][1].rel)):
        ta, tb = top_module(a), top_module(b)
        if ta != tb:
            out.setdefault((ta, tb), example)
    return out


# ---------------------------------------------------------------------------------------
# Rule 3: the server and formats never name candle.

def candle_in(root: Path, crate_dir: Path, forbidden: tuple[str, ...] = ()) -> list[str]:
    found = []
    for sub in ("src", "tests"):
        d = crate_dir / sub
        for p in sorted(d.rglob("*.rs")) if d.is_dir() else []:
            text = p.read_text(encoding="utf-8", errors="replace")
            code = strip_code(text)
            lines = text.splitlines()
            for m in CANDLE_PATH.finditer(code):
                ln = code.count("\n", 0, m.start()) + 1
                found.append(f"  {p.relative_to(root)}:{ln}: {lines[ln - 1].strip()}")
    toml_path = crate_dir / "Cargo.toml"
    if toml_path.is_file():
        try:
            manifest = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            return found + [f"  {toml_path.relative_to(root)}: unreadable: {e}"]
        tables = [(k, manifest.get(k, {})) for k in
                  ("dependencies", "dev-dependencies", "build-dependencies")]
        for target, spec in manifest.get("target", {}).items():
            for k in ("dependencies", "dev-dependencies", "build-dependencies"):
                tables.append((f"target.{target}.{k}", spec.get(k, {})))
        for table, deps in tables:
            for name, spec in deps.items():
                pkg = spec.get("package", name) if isinstance(spec, dict) else name
                if pkg.startswith("candle") or pkg in forbidden:
                    found.append(f"  {toml_path.relative_to(root)}: [{table}] {name}")
        for feat, items in manifest.get("features", {}).items():
            for item in items:
                if item.split("/")[0].lstrip("dep:").startswith("candle"):
                    found.append(f"  {toml_path.relative_to(root)}: [features] {feat} = {item!r}")
    return found


# ---------------------------------------------------------------------------------------
# Rule 4: the engine's layer order, as docs/architecture.md's ```layers block states it.

def read_layers(doc: Path) -> tuple[list[list[str]] | None, list[str]]:
    """The layers of `doc`'s ```layers block, lowest first (None when the file or the block
    is absent), and problems with the block itself."""
    if not doc.is_file():
        return None, []
    blocks = _LAYERS_BLOCK.findall(doc.read_text(encoding="utf-8", errors="replace"))
    if not blocks:
        return None, []
    problems = []
    if len(blocks) > 1:
        problems.append(f"{ARCH_DOC} has {len(blocks)} ```layers blocks; the first one counts")
    layers = [line.split() for line in blocks[0].splitlines() if line.split()]
    seen: dict[str, int] = {}
    for i, layer in enumerate(layers, 1):
        for name in layer:
            if name in seen:
                problems.append(f"{ARCH_DOC}'s ```layers block names {name} twice "
                                f"(layers {seen[name]} and {i})")
            else:
                seen[name] = i
    return layers, problems


def layer_problems(crate: Crate, tedges: dict[tuple[str, str], str],
                   layers: list[list[str]]) -> list[str]:
    """Upward top-level edges of `crate`, its top-level modules missing from `layers`, and
    names in `layers` that are not its top-level modules."""
    level: dict[str, int] = {}
    for i, layer in enumerate(layers, 1):
        for name in layer:
            level.setdefault(name, i)
    tops = sorted(k[0] for k, m in crate.modules.items() if len(k) == 1 and not m.test)
    where = f"the ```layers block of {ARCH_DOC}"
    problems = []
    upward = [f"  {a} (layer {level[a]}) -> {b} (layer {level[b]})    ({example})"
              for (a, b), example in sorted(tedges.items())
              if a in level and b in level and level[a] < level[b]]
    if upward:
        problems.append(f"top-level modules of crate {crate.name} importing from a higher "
                        f"layer ({where}, layer 1 = lowest):\n" + "\n".join(upward))
    missing = [t for t in tops if t not in level]
    if missing:
        problems.append(f"top-level modules of crate {crate.name} missing from {where}: "
                        + ", ".join(missing))
    unknown = sorted(n for n in level if n not in tops)
    if unknown:
        problems.append(f"names in {where} that are not top-level modules of crate "
                        f"{crate.name}: " + ", ".join(unknown))
    return problems


# ---------------------------------------------------------------------------------------

def check(root: Path, graph: bool = False) -> tuple[list[str], str, list[str]]:
    """(violation messages, ok summary, graph lines)."""
    problems: list[str] = []
    graph_lines: list[str] = []
    crates_dir = root / "crates"
    if not crates_dir.is_dir():
        return [f"no crates/ directory under {root}"], "", []
    all_files: list[SrcFile] = []
    long_files: list[tuple[str, int]] = []
    cycle_msgs: list[str] = []
    layers, layer_msgs = read_layers(root / ARCH_DOC)
    for crate_dir in sorted(p for p in crates_dir.iterdir() if (p / "src").is_dir()):
        src_dir = crate_dir / "src"
        files = [load_file(root, crate_dir.name, src_dir, p) for p in sorted(src_dir.rglob("*.rs"))]
        crate = Crate(crate_dir.name, files)
        all_files += files
        if crate.problems:
            problems.append(f"module files in crate {crate.name} do not match the `mod` "
                            "declarations:\n" + "\n".join(crate.problems))
        for f in files:
            if not f.test_only and f.non_test_lines() > MAX_LINES:
                long_files.append((f.rel, f.non_test_lines()))
        fedges = file_edges(crate)
        rel = lambda f: str(f.path.relative_to(src_dir))  # noqa: E731
        for lines in cycles(fedges, rel):
            cycle_msgs.append(f"import cycle between files in crate {crate.name} "
                              f"(crates/{crate.name}/src):\n" + "\n".join(lines))
        tedges = folder_edges(fedges)
        for lines in cycles(tedges, str):
            cycle_msgs.append(f"import cycle between top-level modules in crate {crate.name}:\n"
                              + "\n".join(lines))
        if layers is not None and crate.name == ENGINE_CRATE:
            layer_msgs += layer_problems(crate, tedges, layers)
        if graph:
            graph_lines.append(f"# crate {crate.name}: top-level module -> modules it uses")
            by_src: dict[str, list[str]] = {}
            for a, b in tedges:
                by_src.setdefault(a, []).append(b)
            for a in sorted(by_src):
                graph_lines.append(f"{crate.name}: {a} -> {', '.join(sorted(by_src[a]))}")
    if long_files:
        problems.append(f"files over {MAX_LINES} lines (not counting #[cfg(test)] modules):\n"
                        + "\n".join(f"  {p}: {n} lines" for p, n in long_files))
    problems += cycle_msgs
    problems += layer_msgs
    for name, forbidden in CANDLE_FREE.items():
        crate_dir = crates_dir / name
        found = candle_in(root, crate_dir, forbidden) if crate_dir.is_dir() else []
        if found:
            also = "".join(f" or {f}" for f in forbidden)
            problems.append(f"crates/{name} must not use candle (candle_core/candle_nn "
                            f"paths or a candle{also} dependency):\n" + "\n".join(found))
    counted = [(f.non_test_lines(), f.rel) for f in all_files if not f.test_only]
    n, longest = max(counted) if counted else (0, "-")
    summary = (f"layout ok: {len(all_files)} files, longest non-test file {longest} ({n} lines), "
               "no cycles")
    if layers is not None:
        summary += f", {ENGINE_CRATE} within the {len(layers)} layers of {ARCH_DOC}"
    return problems, summary, graph_lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root (default: the one holding this script)")
    ap.add_argument("--graph", action="store_true",
                    help="print each crate's top-level module dependency edges")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    problems, summary, graph_lines = check(args.root.resolve(), args.graph)
    for line in graph_lines:
        print(line)
    report = sys.stderr if args.graph or problems else sys.stdout
    if problems:
        for p in problems:
            print(f"layout: {p}", file=report)
        print(f"layout: {len(problems)} problem(s) ({time.monotonic() - t0:.2f}s); "
              "see scripts/check-layout.py for the rules", file=report)
        return 1
    print(summary, file=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
