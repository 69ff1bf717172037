//! The committed dump of ggml's own CPU dot products (`tests/fixtures/quant/ggml_dots.bin`,
//! made by `make.sh` there from llama.cpp's AVX2 build): our activation quantization must
//! give ggml's bytes and every dot product ggml's bits.

use super::blocks::{cast_blocks, quantize_row_q8, BlockQ8_0, BlockQ8_1, PlainBlock, QK};
use super::kblocks::{quantize_row_q8_k, BlockQ8K, QK_K};

const FIXTURE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/quant/ggml_dots.bin"
));

/// ggml's type ids.
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q5_0: u32 = 6;
pub const Q5_1: u32 = 7;
pub const Q8_0: u32 = 8;
pub const Q8_1: u32 = 9;
pub const Q4_K: u32 = 12;
pub const Q5_K: u32 = 13;
pub const Q6_K: u32 = 14;
pub const Q8_K: u32 = 15;

/// One weight type's record.
pub struct Case {
    pub weight_type: u32,
    pub act_type: u32,
    /// `[n]` rows of `k / block` blocks, ggml's layout.
    pub weights: &'static [u8],
    /// `[m]` activation rows quantized by ggml.
    pub acts: &'static [u8],
    /// `[m][n]` results.
    pub out: Vec<f32>,
}

pub struct Fixture {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `[m][k]` activations.
    pub x: Vec<f32>,
    /// `[n][k]` weights before ggml quantized them.
    pub w: Vec<f32>,
    pub cases: Vec<Case>,
}

struct Reader(&'static [u8]);

impl Reader {
    fn take(&mut self, n: usize) -> &'static [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

pub fn load() -> Fixture {
    let mut r = Reader(FIXTURE);
    assert_eq!(r.take(8), b"FQDOTS02");
    let (m, n, k) = (r.u32() as usize, r.u32() as usize, r.u32() as usize);
    let x = r.f32s(m * k);
    let w = r.f32s(n * k);
    let mut cases = Vec::new();
    while !r.0.is_empty() {
        let (weight_type, act_type) = (r.u32(), r.u32());
        let wlen = r.u32() as usize;
        let weights = r.take(wlen);
        let alen = r.u32() as usize;
        let acts = r.take(alen);
        let out = r.f32s(m * n);
        cases.push(Case {
            weight_type,
            act_type,
            weights,
            acts,
            out,
        });
    }
    Fixture {
        m,
        n,
        k,
        x,
        w,
        cases,
    }
}

impl Fixture {
    pub fn case(&self, weight_type: u32) -> &Case {
        self.cases
            .iter()
            .find(|c| c.weight_type == weight_type)
            .unwrap_or_else(|| panic!("type {weight_type} not in the fixture"))
    }

    /// Row `r` of the activations quantized by us into `B` blocks of `bk` values.
    pub fn quantized<B: PlainBlock + Default>(&self, bk: usize, q: fn(&[f32], &mut [B])) -> Vec<B> {
        let mut out = vec![B::default(); self.m * self.k / bk];
        for (row, blocks) in self
            .x
            .chunks_exact(self.k)
            .zip(out.chunks_exact_mut(self.k / bk))
        {
            q(row, blocks);
        }
        out
    }
}

/// The blocks' bytes as ggml wrote them.
fn bytes_of<B: PlainBlock>(v: &[B]) -> &[u8] {
    // SAFETY: PlainBlock types are repr(C) plain data; the slice covers exactly their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[test]
fn our_activation_quantization_gives_ggmls_bytes() {
    let f = load();
    let q8_0 = f.quantized::<BlockQ8_0>(QK, quantize_row_q8);
    let q8_1 = f.quantized::<BlockQ8_1>(QK, quantize_row_q8);
    let q8_k = f.quantized::<BlockQ8K>(QK_K, quantize_row_q8_k);
    for c in &f.cases {
        let ours = match c.act_type {
            Q8_0 => bytes_of(&q8_0),
            Q8_1 => bytes_of(&q8_1),
            Q8_K => bytes_of(&q8_k),
            t => panic!("activation type {t}"),
        };
        assert_eq!(ours.len(), c.acts.len());
        if let Some(i) = (0..ours.len()).find(|&i| ours[i] != c.acts[i]) {
            panic!("type {}: activation byte {i} differs", c.act_type);
        }
    }
}

/// Every (row, column) of `case` from the lone dot product `dot` on ggml's own blocks.
fn check_dots<W: PlainBlock, X: PlainBlock>(
    f: &Fixture,
    ty: u32,
    bk: usize,
    dot: fn(&[W], &[X]) -> f32,
) {
    let c = f.case(ty);
    let w: Vec<W> = cast_blocks(c.weights);
    let x: Vec<X> = cast_blocks(c.acts);
    let kb = f.k / bk;
    assert_eq!((w.len(), x.len()), (f.n * kb, f.m * kb));
    for r in 0..f.m {
        for col in 0..f.n {
            let got = dot(&w[col * kb..(col + 1) * kb], &x[r * kb..(r + 1) * kb]);
            let want = c.out[r * f.n + col];
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "type {ty} ({r}, {col}): {got} vs ggml {want}"
            );
        }
    }
}

#[test]
fn portable_dots_give_ggmls_bits() {
    use super::dots::*;
    let f = load();
    check_dots(&f, Q4_0, QK, dot_q4_0_q8_0);
    check_dots(&f, Q4_1, QK, dot_q4_1_q8_1);
    check_dots(&f, Q5_0, QK, dot_q5_0_q8_0);
    check_dots(&f, Q5_1, QK, dot_q5_1_q8_1);
    check_dots(&f, Q8_0, QK, dot_q8_0_q8_0);
    check_dots(&f, Q4_K, QK_K, dot_q4_k_q8_k);
    check_dots(&f, Q5_K, QK_K, dot_q5_k_q8_k);
    check_dots(&f, Q6_K, QK_K, dot_q6_k_q8_k);
}

/// Our weight quantizers (in-situ quantization) on the f32 weights ggml quantized.
fn check_weight_quantizer<B: PlainBlock + Default + Clone>(
    f: &Fixture,
    ty: u32,
    bk: usize,
    q: fn(&[f32], &mut [B]),
) {
    let mut ours = vec![B::default(); f.n * f.k / bk];
    q(&f.w, &mut ours);
    let want = f.case(ty).weights;
    let got = bytes_of(&ours);
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "type {ty}: weight byte {i} differs (block {})",
            i / std::mem::size_of::<B>()
        );
    }
}

#[test]
fn our_weight_quantizers_give_ggmls_bytes() {
    use super::quantize::*;
    let f = load();
    check_weight_quantizer(&f, Q8_0, QK, quantize_row_q8_0_ref);
    check_weight_quantizer(&f, Q4_0, QK, quantize_row_q4_0_ref);
    check_weight_quantizer(&f, Q4_K, QK_K, quantize_row_q4_k_ref);
}
