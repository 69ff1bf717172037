#!/usr/bin/env python3
"""Self-test for scripts/check-layout.py on tiny fake crates in a temp dir.

    python3 -m unittest scripts/test_check_layout.py     (or: python3 scripts/test_check_layout.py)
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "check-layout.py"
_spec = importlib.util.spec_from_file_location("check_layout", SCRIPT)
cl = importlib.util.module_from_spec(_spec)
sys.modules["check_layout"] = cl
_spec.loader.exec_module(cl)

SERVER_TOML = '[package]\nname = "ferrolm"\n\n[dependencies]\nserde = "1"\n'


def lines(n: int, prefix: str = "pub const C") -> str:
    return "".join(f"{prefix}{i}: u32 = {i};\n" for i in range(n))


class LayoutTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.root = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def write(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text if rel.endswith(".toml") else textwrap.dedent(text))

    def problems(self) -> str:
        problems, _, _ = cl.check(self.root)
        return "\n".join(problems)

    def crate(self, name: str = "engine") -> "cl.Crate":
        src = self.root / "crates" / name / "src"
        return cl.Crate(name, [cl.load_file(self.root, name, src, p) for p in sorted(src.rglob("*.rs"))])

    # -- rule 1 ------------------------------------------------------------------------

    def test_601_lines_is_too_long_600_is_not(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod big;\npub mod ok;\n",
            "crates/engine/src/big.rs": lines(601),
            "crates/engine/src/ok.rs": lines(600),
        })
        out = self.problems()
        self.assertIn("crates/engine/src/big.rs: 601 lines", out)
        self.assertNotIn("ok.rs", out)

    def test_cfg_test_module_not_counted_with_tricky_braces(self) -> None:
        tricky = textwrap.dedent('''\
            #[cfg(test)]
            #[allow(dead_code)]
            mod tests {
                use super::*;
                const OPEN: char = '{';
                const CLOSE: char = '}';
                const QUOTE: char = '\\'';
                const DQUOTE: char = '\\"'; const S2: &str = "\\" }";
                const BYTE: u8 = b'}';
                const S: &str = "}}} \\" {";
                const R: &str = r#"}" { "#;
                const RB: &[u8] = br"}}";
                // a } in a line comment
                /* a { in /* a nested */ block } comment */
                fn lifetimes<'a, 'b: 'a>(x: &'a str, _y: &'b str) -> &'a str { x }
                #[test]
                fn t() { 'outer: loop { break 'outer; } assert_eq!(lifetimes("{", "}"), "{"); }
            ''') + lines(150, "    const T") + "}\n"
        # 500 lines before the module and 100 after: 600 outside it, one more is too many
        self.write({
            "crates/engine/src/lib.rs": "pub mod fits;\npub mod over;\n",
            "crates/engine/src/fits.rs": lines(500) + tricky + lines(100, "pub const D"),
            "crates/engine/src/over.rs": lines(500) + tricky + lines(101, "pub const D"),
        })
        out = self.problems()
        self.assertNotIn("fits.rs", out)
        self.assertIn("crates/engine/src/over.rs: 601 lines", out)

    def test_strip_code_blanks_literals_and_comments_only(self) -> None:
        for snippet in [
            "let c = '{';", "let c = '\\'';", "let c = '\\\\'; let d = '}';", "let c = '\\u{7b}';",
            "let c = '\\\"'; let s = \"{\";", "let b = b'}';", 'let s = "\\" {";',
            'let s = r#"{ " }"#;', 'let s = br##"}"#"##;', "// {\n", "/* { /* } */ { */",
            "let s = \"multi\n{line\";",
        ]:
            out = cl.strip_code(snippet)
            self.assertEqual(len(out), len(snippet), snippet)
            self.assertEqual(out.count("\n"), snippet.count("\n"), snippet)
            self.assertNotIn("{", out, snippet)
            self.assertNotIn("}", out, snippet)
        code = "fn f<'a>(x: &'a str) -> &'a str { 'l: loop { break 'l; } x }"
        self.assertEqual(cl.strip_code(code), code)

    def test_cfg_test_file_is_exempt(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\n",
            "crates/engine/src/a/mod.rs": "#[cfg(test)]\nmod tests;\n#[cfg(all(test, unix))]\nmod more;\n",
            "crates/engine/src/a/tests.rs": "use crate::a::*;\n" + lines(700),
            "crates/engine/src/a/more/mod.rs": "mod deep;\n" + lines(700),
            "crates/engine/src/a/more/deep.rs": lines(700),
        })
        self.assertEqual(self.problems(), "")

    # -- rule 2 ------------------------------------------------------------------------

    def test_two_file_cycle(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\npub mod b;\n",
            "crates/engine/src/a.rs": "use crate::b::B;\npub struct A;\n",
            "crates/engine/src/b.rs": "pub struct B;\npub fn f() { let _ = crate::a::A; }\n",
        })
        out = self.problems()
        self.assertIn("import cycle between files in crate engine", out)
        self.assertIn("cycle: a.rs, b.rs", out)
        self.assertIn("a.rs -> b.rs    (crates/engine/src/a.rs:1: use crate::b::B;)", out)
        self.assertIn("b.rs -> a.rs    (crates/engine/src/b.rs:2: pub fn f() { let _ = crate::a::A; })", out)

    def test_cycle_only_in_comments_strings_or_tests_is_ignored(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\npub mod b;\n",
            "crates/engine/src/a.rs": "use crate::b::B;\npub struct A;\n",
            "crates/engine/src/b.rs": (
                "/// See [`crate::a::A`].\npub struct B;\n"
                "pub const S: &str = \"crate::a::A\";\n"
                "#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n"
                "#[cfg(test)]\nuse crate::a::A as _;\n"
            ),
        })
        self.assertEqual(self.problems(), "")

    def test_folder_cycle_without_file_cycle(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod x;\npub mod y;\n",
            "crates/engine/src/x/mod.rs": "pub mod one;\npub mod four;\n",
            "crates/engine/src/x/one.rs": "use crate::y::two::f;\npub fn g() { f() }\n",
            "crates/engine/src/x/four.rs": "pub fn h() {}\n",
            "crates/engine/src/y/mod.rs": "pub mod two;\npub mod three;\n",
            "crates/engine/src/y/two.rs": "pub fn f() {}\n",
            "crates/engine/src/y/three.rs": "pub fn k() { crate::x::four::h() }\n",
        })
        out = self.problems()
        self.assertNotIn("between files", out)
        self.assertIn("import cycle between top-level modules in crate engine", out)
        self.assertIn("cycle: x, y", out)
        self.assertIn("x -> y    (crates/engine/src/x/one.rs:1: use crate::y::two::f;)", out)
        self.assertIn("y -> x    (crates/engine/src/y/three.rs:1:", out)

    def test_use_super_is_an_edge_to_mod_rs(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\npub mod b;\n",
            "crates/engine/src/a/mod.rs": (
                "mod x;\npub use x::g;\npub struct Thing;\npub fn h() { crate::b::f() }\n"),
            "crates/engine/src/a/x.rs": "use super::Thing;\npub fn g() -> Thing { Thing }\n",
            "crates/engine/src/b.rs": "pub fn f() { let _ = crate::a::g(); }\n",
        })
        out = self.problems()
        # a/x.rs -> a/mod.rs -> b.rs -> a/x.rs (b's crate::a::g goes through the re-export)
        self.assertIn("cycle: a/mod.rs, a/x.rs, b.rs", out)
        self.assertIn("a/x.rs -> a/mod.rs    (crates/engine/src/a/x.rs:1: use super::Thing;)", out)
        self.assertIn("b.rs -> a/x.rs", out)
        self.assertNotIn("a/mod.rs -> a/x.rs", out)  # `mod x;` / `pub use x::g;` are not edges

    def test_reexport_followed_to_defining_file(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\npub mod c;\n",
            # y.rs names `super::Thing`, which mod.rs only re-exports from x.rs: no cycle with mod.rs
            "crates/engine/src/a/mod.rs": (
                "mod x;\nmod y;\nmod inner;\npub use x::Thing;\npub use self::inner::{Deep, Other as O};\n"
                "pub fn helper() -> u32 { y::count() }\n"),
            "crates/engine/src/a/x.rs": "pub struct Thing;\n",
            "crates/engine/src/a/y.rs": "use super::Thing;\npub fn count() -> u32 { let _t = Thing; 1 }\n",
            "crates/engine/src/a/inner/mod.rs": "mod deep;\npub use deep::{Deep, Other};\n",
            "crates/engine/src/a/inner/deep.rs": "pub struct Deep;\npub struct Other;\n",
            "crates/engine/src/c.rs": "use crate::a::{Deep, O};\n",
        })
        self.assertEqual(self.problems(), "")
        crate = self.crate()
        files = lambda path: sorted(f.rel for f in crate.resolve(path))  # noqa: E731
        self.assertEqual(files(("a", "Thing")), ["crates/engine/src/a/x.rs"])
        self.assertEqual(files(("a", "Deep")), ["crates/engine/src/a/inner/deep.rs"])
        self.assertEqual(files(("a", "O")), ["crates/engine/src/a/inner/deep.rs"])
        self.assertEqual(files(("a", "helper")), ["crates/engine/src/a/mod.rs"])
        edges = {(a.rel, b.rel) for a, b in cl.file_edges(crate)}
        self.assertIn(("crates/engine/src/c.rs", "crates/engine/src/a/inner/deep.rs"), edges)
        self.assertIn(("crates/engine/src/a/y.rs", "crates/engine/src/a/x.rs"), edges)
        self.assertNotIn(("crates/engine/src/a/y.rs", "crates/engine/src/a/mod.rs"), edges)

    def test_reexport_from_elsewhere_is_an_edge_to_mod_rs(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\npub mod b;\n",
            "crates/engine/src/a/mod.rs": "pub use crate::b::B;\npub struct A;\n",
            "crates/engine/src/b.rs": "pub struct B;\npub fn f() { let _ = crate::a::B; }\n",
        })
        self.assertIn("cycle: a/mod.rs, b.rs", self.problems())

    def test_module_files_must_match_declarations(self) -> None:
        self.write({
            "crates/engine/src/lib.rs": "pub mod a;\npub mod gone;\n",
            "crates/engine/src/a.rs": "pub fn f() {}\n",
            "crates/engine/src/a/mod.rs": "pub fn f() {}\n",
        })
        out = self.problems()
        self.assertIn("crates/engine/src/lib.rs:2: pub mod gone;  -- no file for this module", out)
        self.assertIn("both define module crate::a", out)

    # -- rule 3 ------------------------------------------------------------------------

    def test_candle_in_server(self) -> None:
        self.write({
            "crates/server/Cargo.toml": SERVER_TOML + 'candle-core = "0.9"\n',
            "crates/server/src/main.rs": (
                "// candle_core in a comment is fine\nuse candle_core::Tensor;\nfn main() {}\n"),
            "crates/server/tests/t.rs": "fn f() { let _ = candle_nn::ops::softmax; }\n",
        })
        out = self.problems()
        self.assertIn("crates/server must not use candle", out)
        self.assertIn("crates/server/src/main.rs:2: use candle_core::Tensor;", out)
        self.assertIn("crates/server/tests/t.rs:1:", out)
        self.assertIn("crates/server/Cargo.toml: [dependencies] candle-core", out)
        self.assertNotIn("main.rs:1", out)

    def test_candle_in_formats(self) -> None:
        self.write({
            "crates/formats/Cargo.toml": (
                '[package]\nname = "ferrolm-formats"\n\n[dependencies]\n'
                'ferrolm-engine = { path = "../engine" }\nthiserror = "2"\n'),
            "crates/formats/src/lib.rs": "pub fn f() { let _ = candle_core::DType::F32; }\n",
        })
        out = self.problems()
        self.assertIn("crates/formats must not use candle", out)
        self.assertIn("crates/formats/src/lib.rs:1:", out)
        self.assertIn("crates/formats/Cargo.toml: [dependencies] ferrolm-engine", out)
        self.assertNotIn("thiserror", out)

    # -- rule 4 ------------------------------------------------------------------------

    LAYERED = {
        "crates/engine/src/lib.rs": "pub mod base;\npub mod mid;\npub mod peer;\npub mod top;\n",
        "crates/engine/src/base.rs": "pub struct B;\n",
        "crates/engine/src/mid/mod.rs": "mod inner;\npub use inner::M;\n",
        "crates/engine/src/mid/inner.rs": "use crate::base::B;\npub struct M(pub B);\n",
        "crates/engine/src/peer.rs": "pub fn p() { let _ = crate::mid::M(crate::base::B); }\n",
        "crates/engine/src/top.rs": "use crate::{mid::M, peer::p};\npub fn t() -> M { p(); todo!() }\n",
    }

    def doc(self, block: str, before: str = "# Architecture\n\nText.\n\n") -> None:
        self.write({"docs/architecture.md": before + "```layers\n" + block + "```\n\nMore.\n"})

    def test_layer_order_kept_within_and_downward(self) -> None:
        self.write(self.LAYERED)
        self.doc("base\nmid peer\n\ntop\n")  # peer -> mid within a layer is fine
        self.assertEqual(self.problems(), "")
        _, summary, _ = cl.check(self.root)
        self.assertTrue(summary.endswith(", engine within the 3 layers of docs/architecture.md"),
                        summary)

    def test_upward_edge_reported_with_its_example(self) -> None:
        self.write(self.LAYERED)
        self.doc("base mid\npeer\ntop\n")  # mid -> base within layer 1: fine
        self.assertEqual(self.problems(), "")
        self.doc("mid\nbase peer\ntop\n")  # mid (1) uses base (2): upward
        out = self.problems()
        self.assertIn("top-level modules of crate engine importing from a higher layer", out)
        self.assertIn("  mid (layer 1) -> base (layer 2)    "
                      "(crates/engine/src/mid/inner.rs:1: use crate::base::B;)", out)
        self.assertNotIn("peer (layer", out)
        self.assertNotIn("top (layer", out)
        self.doc("top base\nmid peer\n")  # top (1) uses mid and peer (2)
        out = self.problems()
        self.assertIn("  top (layer 1) -> mid (layer 2)", out)
        self.assertIn("  top (layer 1) -> peer (layer 2)", out)
        self.assertNotIn("mid (layer 2) -> base", out)

    def test_missing_and_unknown_modules_reported(self) -> None:
        self.write(self.LAYERED)
        self.doc("base  gone\nmid\n")
        out = self.problems()
        self.assertIn("top-level modules of crate engine missing from the ```layers block of "
                      "docs/architecture.md: peer, top", out)
        self.assertIn("names in the ```layers block of docs/architecture.md that are not "
                      "top-level modules of crate engine: gone", out)

    def test_layer_block_problems_and_absence(self) -> None:
        self.write(self.LAYERED)
        self.doc("base\nmid peer base\ntop\n")
        self.assertIn("names base twice (layers 1 and 2)", self.problems())
        # no block (another fenced block does not count), or no file: no layer rule
        self.write({"docs/architecture.md": "# A\n\n```text\ntop\nbase\n```\n"})
        self.assertEqual(self.problems(), "")
        (self.root / "docs/architecture.md").unlink()
        self.assertEqual(self.problems(), "")
        _, summary, _ = cl.check(self.root)
        self.assertTrue(summary.endswith("no cycles"), summary)

    def test_layers_only_apply_to_the_engine_crate(self) -> None:
        self.write(self.LAYERED)
        self.write({
            "crates/server/Cargo.toml": SERVER_TOML,
            "crates/server/src/main.rs": "mod cli;\nmod api;\nfn main() { cli::run() }\n",
            "crates/server/src/cli.rs": "pub fn run() { crate::api::serve() }\n",
            "crates/server/src/api.rs": "pub fn serve() {}\n",
        })
        self.doc("base\nmid peer\ntop\n")
        self.assertEqual(self.problems(), "")

    def test_layers_exit_1_on_the_command_line(self) -> None:
        self.write(self.LAYERED)
        self.doc("top\nbase mid peer\n")
        run = subprocess.run([sys.executable, str(SCRIPT), "--root", str(self.root)],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 1)
        self.assertIn("layout: top-level modules of crate engine importing from a higher layer",
                      run.stderr)

    # -- the command -------------------------------------------------------------------

    def test_clean_tree_exits_0_with_summary(self) -> None:
        self.write({
            "crates/server/Cargo.toml": SERVER_TOML,
            "crates/server/src/main.rs": "mod cli;\nfn main() { cli::run() }\n",
            "crates/server/src/cli.rs": "pub fn run() {}\n",
            "crates/engine/src/lib.rs": "pub mod a;\n",
            "crates/engine/src/a.rs": lines(42),
        })
        run = subprocess.run([sys.executable, str(SCRIPT), "--root", str(self.root)],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(run.stdout.strip(),
                         "layout ok: 4 files, longest non-test file crates/engine/src/a.rs "
                         "(42 lines), no cycles")
        graph = subprocess.run([sys.executable, str(SCRIPT), "--root", str(self.root), "--graph"],
                               capture_output=True, text=True, timeout=60)
        self.assertIn("server: crate root (main.rs) -> cli", graph.stdout)

    def test_violation_exits_1(self) -> None:
        self.write({"crates/engine/src/lib.rs": lines(700)})
        run = subprocess.run([sys.executable, str(SCRIPT), "--root", str(self.root)],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 1)
        self.assertIn("crates/engine/src/lib.rs: 700 lines", run.stderr)


if __name__ == "__main__":
    unittest.main()
