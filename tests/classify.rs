//! The batched classifier (with its ipcache prefetch) gives what the
//! frame-by-frame one gives, on synthetic worlds from the harness.

use xpf::classify::{classify, classify_batch, BATCH, PREFETCH_MIN_ENTRIES};
use xpf::harness::synth::{frames, world, Shape};
use xpf::wire::ParseError;

#[test]
fn batched_classification_equals_frame_by_frame() {
    // Both sides of the prefetch threshold.
    for entries in [3_000, PREFETCH_MIN_ENTRIES + 1_000] {
        batched_equals_single(entries);
    }
}

fn batched_equals_single(ipcache_entries: usize) {
    let w = world(Shape {
        ipcache_entries,
        identities: 50,
        rules: 200,
        endpoints: 2,
    })
    .unwrap();
    let mut fs = frames(&w, 100, 3);
    // A truncated and a VLAN-tagged frame must come back as the same
    // errors in both paths.
    fs[7].truncate(20);
    fs[40][12..14].copy_from_slice(&[0x81, 0x00]);
    let table = w
        .engine
        .compiled
        .table(w.engine.inventory.endpoint_identities[0]);
    let reader = w.engine.ipcache.reader();
    let view = reader.enter().unwrap();
    let refs: Vec<&[u8]> = fs.iter().map(Vec::as_slice).collect();
    let mut out = [Err(ParseError::TruncatedEthernet); BATCH];
    let mut seen_codes = 0;
    for (n, batch) in refs.chunks(BATCH).enumerate() {
        classify_batch(batch, table, &view, &mut out);
        for (i, f) in batch.iter().enumerate() {
            let one = classify(f, table, &view);
            assert_eq!(out[i], one, "frame {}", n * BATCH + i);
            seen_codes += usize::from(matches!(one, Ok(c) if c.code.is_rule()));
        }
    }
    assert!(seen_codes > 0, "some frames hit a rule");
    assert_eq!(
        classify(refs[40], table, &view),
        Err(ParseError::VlanTagged)
    );
    assert!(classify(refs[7], table, &view).is_err());
}
