//! Under feature `cuda`: compiles `kernels/*.cu` with nvcc into a fatbin for the configured
//! architectures (FERROLM_CUDA_ARCHS, default "80;89;90", plus PTX of the newest for later
//! GPUs) and points the linker at static cudart/libstdc++ for candle's MoE library, so the
//! binary needs no CUDA library at link time. Without the feature it does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    simd_cfg();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cuda_home =
        PathBuf::from(std::env::var("CUDA_HOME").unwrap_or_else(|_| "/usr/local/cuda".into()));
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=FERROLM_CUDA_ARCHS");
    link_stubs(&out, &cuda_home);
    compile_kernels(&out, &cuda_home);
}

/// `cfg(x86_v3)`: the target is x86-64 with AVX2, FMA and F16C (x86-64-v3, which the
/// Makefile builds for), the SIMD our CPU kernels are written in; elsewhere they take their
/// portable forms.
fn simd_cfg() {
    println!("cargo::rustc-check-cfg=cfg(x86_v3)");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    let x86 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    if x86 && has("avx2") && has("fma") && has("f16c") {
        println!("cargo::rustc-cfg=x86_v3");
    }
}

/// candle-kernels asks for -lcudart and -lstdc++: give the linker scripts that name the
/// static archives instead.
fn link_stubs(out: &Path, cuda_home: &Path) {
    let stubs = out.join("linkstubs");
    std::fs::create_dir_all(&stubs).expect("linkstubs dir");
    let cudart = cuda_home.join("lib64/libcudart_static.a");
    let cudart = std::fs::canonicalize(&cudart).unwrap_or(cudart);
    std::fs::write(
        stubs.join("libcudart.so"),
        format!("INPUT({})\n", cudart.display()),
    )
    .expect("stub");
    let stdcpp = Command::new("g++")
        .arg("-print-file-name=libstdc++.a")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "libstdc++.a".into());
    std::fs::write(stubs.join("libstdc++.so"), format!("INPUT({stdcpp})\n")).expect("stub");
    println!("cargo:rustc-link-search=native={}", stubs.display());
}

fn compile_kernels(out: &Path, cuda_home: &Path) {
    // The manifest folder at run time: a build script binary reused from a clone at
    // another path (a shared CARGO_TARGET_DIR) must still read this clone's kernels.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let kernels = Path::new(&manifest).join("../../kernels");
    // The folder too, so a new kernel file triggers a rebuild.
    println!("cargo:rerun-if-changed={}", kernels.display());
    let nvcc = cuda_home.join("bin/nvcc");
    let archs = std::env::var("FERROLM_CUDA_ARCHS").unwrap_or_else(|_| "80;89;90".into());
    let archs: Vec<String> = archs
        .split([';', ',', ' '])
        .map(|a| a.trim().trim_start_matches("sm_").to_string())
        .filter(|a| !a.is_empty())
        .collect();
    println!(
        "cargo:rustc-env=FERROLM_CUDA_ARCHS_BUILT={}",
        archs.join(";")
    );
    let newest = archs
        .iter()
        .max_by_key(|a| a.trim_end_matches('a').parse::<u32>().unwrap_or(0))
        .cloned();
    let mut entries: Vec<_> = std::fs::read_dir(&kernels)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", kernels.display()));
    entries.sort();
    for src in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
    {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("kernel name");
        let mut cmd = Command::new(&nvcc);
        cmd.args(["-fatbin", "-O3", "--use_fast_math", "-std=c++17", "-I"])
            .arg(&kernels);
        for a in &archs {
            cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
        }
        if let Some(n) = &newest {
            cmd.arg(format!("-gencode=arch=compute_{n},code=compute_{n}"));
        }
        cmd.arg("-o")
            .arg(out.join(format!("{stem}.fatbin")))
            .arg(src);
        let res = cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (set CUDA_HOME; scripts/install-cuda-toolchain.sh)",
                nvcc.display()
            )
        });
        if !res.status.success() {
            panic!(
                "nvcc failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&res.stdout),
                String::from_utf8_lossy(&res.stderr)
            );
        }
    }
    for h in std::fs::read_dir(&kernels).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", h.path().display());
    }
}
