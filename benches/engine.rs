//! Criterion benches of the engine's hot pieces on the CPU, at the default model's shapes
//! (SmolLM2-135M: hidden 576, MLP 1536, 9 heads / 3 KV heads of 64, vocab 49152):
//! quantized matmul at batch 1/8/32, paged attention at several context lengths, block
//! pool allocate/free, one scheduler step with 256 running requests, and top-p sampling
//! over the whole vocabulary.
//!
//! `cargo bench -p ferrolm-engine --bench engine` (add `-- --quick` for a short run; the
//! workspace builds with `-C target-cpu=x86-64-v3`). These time pieces, not the product:
//! serving figures beside llama.cpp come from `benches/compare-llamacpp.sh`.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrolm_engine::attention::{paged_attention_cpu_f16, PagedAttentionShape, StepRows};
use ferrolm_engine::kv_cache::{BlockPool, KvCacheManager};
use ferrolm_engine::lcg::lcg_uniform;
use ferrolm_engine::quant::{BlockQ4_1, BlockQ8_0, InSituType, QuantLinear, QuantWeights};
use ferrolm_engine::request::Request;
use ferrolm_engine::sampling::{sample_token, SamplingParams};
use ferrolm_engine::scheduler::{Scheduler, SchedulerConfig};

const HIDDEN: usize = 576;
const MLP: usize = 1536;
const VOCAB: usize = 49152;

fn f16(x: f32) -> half::f16 {
    half::f16::from_f32(x)
}

/// A Q4_1 weight `[n, k]` of pseudo-random blocks (scales like a trained layer's).
fn q4_1(n: usize, k: usize, seed: &mut u64) -> QuantLinear {
    let u = lcg_uniform(n * k / 32 * 18, seed);
    let blocks = (0..n * k / 32)
        .map(|b| {
            let r = &u[b * 18..(b + 1) * 18];
            let mut qs = [0u8; 16];
            for (i, q) in qs.iter_mut().enumerate() {
                *q = ((r[2 + i] + 1.0) * 127.9) as u8;
            }
            BlockQ4_1 {
                d: f16(0.002 + 0.001 * r[0].abs()),
                m: f16(-0.01 * r[1].abs()),
                qs,
            }
        })
        .collect();
    QuantLinear::Own {
        w: QuantWeights::q4_1(blocks, n, k),
        n,
        k,
    }
}

/// A Q8_0 weight `[n, k]` (the tied embedding / output projection's type).
fn q8_0(n: usize, k: usize, seed: &mut u64) -> QuantLinear {
    let u = lcg_uniform(n * k, seed);
    let blocks = (0..n * k / 32)
        .map(|b| {
            let mut qs = [0i8; 32];
            for (i, q) in qs.iter_mut().enumerate() {
                *q = (u[b * 32 + i] * 127.0) as i8;
            }
            BlockQ8_0 { d: f16(0.003), qs }
        })
        .collect();
    QuantLinear::Own {
        w: QuantWeights::q8_0(blocks, n, k),
        n,
        k,
    }
}

/// A Q4_K weight `[n, k]` (k a multiple of 256), quantized from pseudo-random values.
fn q4_k(n: usize, k: usize, seed: &mut u64) -> QuantLinear {
    let w: Vec<f32> = lcg_uniform(n * k, seed)
        .into_iter()
        .map(|u| u * 0.05)
        .collect();
    QuantLinear::Own {
        w: QuantWeights::quantize(InSituType::Q4K, &w, n, k).expect("k is a multiple of 256"),
        n,
        k,
    }
}

fn quant_matmul(c: &mut Criterion) {
    let mut seed = 1;
    let mut g = c.benchmark_group("quant_matmul");
    for (name, w, k) in [
        (
            "q4_1 576->1536 (MLP up)",
            q4_1(MLP, HIDDEN, &mut seed),
            HIDDEN,
        ),
        (
            "q8_0 576->49152 (output)",
            q8_0(VOCAB, HIDDEN, &mut seed),
            HIDDEN,
        ),
        (
            "q4_k 1536->576 (MLP down)",
            q4_k(HIDDEN, MLP, &mut seed),
            MLP,
        ),
    ] {
        for rows in [1usize, 8, 32] {
            let x = Tensor::from_vec(lcg_uniform(rows * k, &mut seed), (rows, k), &Device::Cpu)
                .expect("x");
            // Weight bytes read per call (the figure a decode step is bound by).
            let bytes = match &w {
                QuantLinear::Own { w, .. } => w.size_bytes(),
                _ => 0,
            };
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_with_input(BenchmarkId::new(name, rows), &x, |b, x| {
                b.iter(|| black_box(w.forward(x).expect("matmul")))
            });
        }
    }
    g.finish();
}

/// One attention step's inputs: `seqs` sequences of `ctx` tokens in their own blocks, with
/// either one new token each (decode rows) or, for one sequence, its whole prompt.
struct AttentionCase {
    q: Vec<f32>,
    k: Vec<half::f16>,
    v: Vec<half::f16>,
    tables: Vec<Vec<u32>>,
    qsl: Vec<usize>,
    ctxs: Vec<usize>,
    prompt_lens: Vec<usize>,
}

impl AttentionCase {
    fn new(
        shape: PagedAttentionShape,
        seqs: usize,
        ctx: usize,
        prompt: bool,
        seed: &mut u64,
    ) -> Self {
        let (nh, nkv, hd, bs) = (
            shape.num_heads,
            shape.num_kv_heads,
            shape.head_dim,
            shape.block_size,
        );
        let blocks_per = ctx.div_ceil(bs);
        let num_blocks = seqs * blocks_per;
        let f16s = |v: Vec<f32>| -> Vec<half::f16> { v.into_iter().map(f16).collect() };
        let k = f16s(lcg_uniform(num_blocks * bs * nkv * hd, seed));
        let v = f16s(lcg_uniform(num_blocks * bs * nkv * hd, seed));
        let rows_per = if prompt { ctx } else { 1 };
        Self {
            q: lcg_uniform(seqs * rows_per * nh * hd, seed),
            k,
            v,
            tables: (0..seqs)
                .map(|s| ((s * blocks_per) as u32..((s + 1) * blocks_per) as u32).collect())
                .collect(),
            qsl: (0..=seqs).map(|s| s * rows_per).collect(),
            ctxs: vec![ctx; seqs],
            prompt_lens: vec![if prompt { ctx } else { 0 }; seqs],
        }
    }

    fn run(&self, shape: PagedAttentionShape, out: &mut [f32]) {
        let step = StepRows {
            query_start_loc: &self.qsl,
            context_lens: &self.ctxs,
            prompt_lens: &self.prompt_lens,
            block_tables: &self.tables,
        };
        paged_attention_cpu_f16(shape, (&self.q, &self.k, &self.v), step, out);
    }
}

fn paged_attention(c: &mut Criterion) {
    let (nh, nkv, hd, bs) = (9usize, 3usize, 64usize, 16usize);
    let shape = PagedAttentionShape::new(nh, nkv, hd, bs);
    let mut seed = 2;
    for (seqs, ctxs) in [(16, &[128usize, 512, 2048][..]), (1, &[512])] {
        let mut g = c.benchmark_group(format!("paged_attention_cpu decode x{seqs}"));
        for &ctx in ctxs {
            let case = AttentionCase::new(shape, seqs, ctx, false, &mut seed);
            let mut out = vec![0f32; case.q.len()];
            g.throughput(Throughput::Bytes((2 * seqs * ctx * nkv * hd * 2) as u64));
            g.bench_function(BenchmarkId::from_parameter(ctx), |b| {
                b.iter(|| {
                    case.run(shape, &mut out);
                    black_box(&out);
                })
            });
        }
        g.finish();
    }

    // One prompt of `ctx` tokens in one step (llama.cpp's prompt order): the prefill side.
    let mut g = c.benchmark_group("paged_attention_cpu prompt");
    g.sample_size(10);
    for ctx in [128usize, 512] {
        let case = AttentionCase::new(shape, 1, ctx, true, &mut seed);
        let mut out = vec![0f32; case.q.len()];
        g.throughput(Throughput::Elements(ctx as u64));
        g.bench_function(BenchmarkId::from_parameter(ctx), |b| {
            b.iter(|| {
                case.run(shape, &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn block_pool(c: &mut Criterion) {
    c.bench_function("block_pool allocate+free 64 of 4096", |b| {
        let mut pool = BlockPool::new(4096, true);
        b.iter(|| {
            let blocks = pool.get_new_blocks(64).expect("free blocks");
            pool.free_blocks(black_box(blocks));
        })
    });
}

fn scheduler_step(c: &mut Criterion) {
    // 256 running requests mid-decode: schedule, lay out the batch, take one token each.
    // Room for every iteration criterion runs (a short measurement; each step adds a token
    // to each request, and a request must not finish during the run).
    let (bs, max_len) = (16, 1 << 16);
    let mut sched = Scheduler::new(
        SchedulerConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_model_len: max_len,
            max_batch_prefill_tokens: None,
        },
        KvCacheManager::new(256 * max_len / bs, bs, true),
        vec![2],
    )
    .expect("scheduler");
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_len - 64)
    };
    let mut seed = 3;
    for i in 0..256u64 {
        let prompt: Vec<u32> = lcg_uniform(32, &mut seed)
            .iter()
            .map(|u| ((u + 1.0) * 20_000.0) as u32 + 10)
            .collect();
        sched
            .add_request(Request::new(i, prompt, params.clone()))
            .expect("admitted");
    }
    // Prefill everything first, so the measured steps are decode steps.
    for _ in 0..4 {
        let out = sched.schedule();
        let sampled: Vec<Option<u32>> = out
            .scheduled
            .iter()
            .map(|s| s.samples.then_some(7))
            .collect();
        sched.update(&out, &sampled);
    }
    c.bench_function(
        "scheduler step, 256 running (schedule + build_batch + update)",
        |b| {
            b.iter(|| {
                let out = sched.schedule();
                let (batch, _) = sched.build_batch(&out);
                black_box(&batch);
                let sampled: Vec<Option<u32>> = out
                    .scheduled
                    .iter()
                    .map(|s| s.samples.then_some(7))
                    .collect();
                black_box(sched.update(&out, &sampled));
            })
        },
    );
}

fn sampler(c: &mut Criterion) {
    let mut seed = 4;
    let logits: Vec<f32> = lcg_uniform(VOCAB, &mut seed)
        .iter()
        .map(|u| u * 8.0)
        .collect();
    let prompt: Vec<u32> = (0..128).collect();
    for (name, top_p) in [
        (
            "sample_token temperature 0.8, top_p 0.9 over 49152 logits",
            0.9,
        ),
        (
            "sample_token temperature 0.8 over 49152 logits (OpenAI's default cuts)",
            1.0,
        ),
    ] {
        let p = SamplingParams {
            temperature: 0.8,
            top_p,
            ..Default::default()
        };
        c.bench_function(name, |b| {
            b.iter_batched_ref(
                || logits.clone(),
                |l| black_box(sample_token(l, &p, &prompt, &[], &[2], 42)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, quant_matmul, paged_attention, block_pool, sampler);
criterion_group! {
    name = short;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = scheduler_step
}
criterion_main!(benches, short);
