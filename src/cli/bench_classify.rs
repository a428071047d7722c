//! `xpf bench classify`: its flags checked, then the classify benchmark
//! (`crate::harness::bench::classify`) run and its report printed.

use super::*;
use crate::harness::bench::classify::{measure, ClassifyOptions};

pub(super) fn bench_classify(
    ipcache_entries: usize,
    rules: usize,
    identities: usize,
    seconds: f64,
    output: Output,
) -> Result<()> {
    if !(0.1..=600.0).contains(&seconds) {
        bail!("--seconds must be between 0.1 and 600");
    }
    if identities == 0 {
        bail!("--identities must be at least 1");
    }
    let report = measure(&ClassifyOptions {
        ipcache_entries,
        rules,
        identities,
        seconds,
    })?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report.json())?),
        Output::Text => println!("{report}"),
    }
    std::io::stdout().flush().ok();
    Ok(())
}
