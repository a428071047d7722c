// Compiles every `bpf/*.bpf.c` into a libbpf-rs skeleton in OUT_DIR.
// The skeletons are included by `src/datapath/bpf.rs`; the C sources share
// `bpf/include/xpf_abi.h` with Rust through the generated types.
use std::{env, ffi::OsStr, fs, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("target arch is set by cargo");
    let bpf_arch = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    };
    // The directory itself, so a new program triggers a rebuild.
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=bpf/include");

    let mut sources: Vec<PathBuf> = fs::read_dir("bpf")
        .expect("bpf/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_name()
            .and_then(OsStr::to_str)
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .expect("source named *.bpf.c");
        let skel = out.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .clang_args([
                "-Wall".to_string(),
                "-Ibpf/include".to_string(),
                format!("-I/usr/include/{}-linux-gnu", arch),
                format!("-D__TARGET_ARCH_{bpf_arch}"),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building BPF skeleton for {}: {e}", src.display()));
    }
}
