//! The layout's rules, checked on the source: which way dependencies point,
//! where the OS is called, and how big a room may grow. A change that
//! breaks one fails here with the file and line, not in a review.

use std::path::{Path, PathBuf};

/// The I/O-free core: parsed frames and configs' worlds in, verdicts out.
const CORE: &[&str] = &[
    "wire",
    "labels.rs",
    "identity.rs",
    "ipcache",
    "ipcache.rs",
    "policy",
    "policy.rs",
    "conntrack",
    "conntrack.rs",
    "fragments.rs",
    "filter.rs",
    "engine.rs",
    "world.rs",
    "inventory.rs",
    "rules.rs",
    "classify.rs",
];

/// What the core must never import.
const OUTSIDE_CORE: &[&str] = &["config", "datapath", "sys", "cli", "harness", "endpoint"];

/// What only `src/sys/` may do: spawn processes, open packet or netlink
/// sockets, switch namespaces, make eventfds.
const OS_CALLS: &[&str] = &[
    "Command::new",
    "libc::socket(",
    "AF_PACKET",
    "AF_NETLINK",
    "libc::setns",
    "libc::eventfd",
];

/// Longest source file, in lines (the issue says "about 600").
const MAX_LINES: usize = 700;
/// Files that are longer because they are one job each.
const LONG_BY_NATURE: &[(&str, &str)] = &[
    ("src/wire/tests.rs", "the parser's test table"),
    ("src/hostile.rs", "the hostile-frame corpus: data"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable source tree") {
        let path = e.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable source");
            let rel = p
                .strip_prefix(root)
                .expect("under the crate")
                .display()
                .to_string();
            (rel, text)
        })
        .collect()
}

/// Code lines: comments dropped, so a doc that names a module or a call
/// is not a dependency.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let code = l.split("//").next().unwrap_or("").trim();
        (!code.is_empty()).then_some((i + 1, code))
    })
}

fn is_core(rel: &str) -> bool {
    let under_src = rel.strip_prefix("src/").expect("under src");
    CORE.iter()
        .any(|c| under_src == *c || under_src.starts_with(&format!("{c}/")))
}

#[test]
fn the_core_imports_nothing_outside_it() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for (rel, text) in all_sources() {
        if !is_core(&rel) {
            continue;
        }
        checked += 1;
        for (n, line) in code_lines(&text) {
            for m in OUTSIDE_CORE {
                if line.contains(&format!("crate::{m}::"))
                    || line.contains(&format!("crate::{m};"))
                    || line.contains(&format!("crate::{m}}}"))
                    || line.contains(&format!("crate::{{{m}"))
                {
                    bad.push(format!("{rel}:{n}: {line}"));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} core files: is CORE stale?"
    );
    assert!(
        bad.is_empty(),
        "core files importing outside the core:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_sys_calls_the_os() {
    let mut bad = Vec::new();
    for (rel, text) in all_sources() {
        if rel.starts_with("src/sys/") {
            continue;
        }
        for (n, line) in code_lines(&text) {
            for call in OS_CALLS {
                if line.contains(call) {
                    bad.push(format!("{rel}:{n}: {line}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "OS calls outside src/sys/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_room_is_too_big() {
    let mut bad = Vec::new();
    for (rel, text) in all_sources() {
        let n = text.lines().count();
        if n > MAX_LINES && !LONG_BY_NATURE.iter().any(|(f, _)| *f == rel) {
            bad.push(format!("{rel}: {n} lines"));
        }
    }
    assert!(
        bad.is_empty(),
        "files over {MAX_LINES} lines (split them, or say why they are one job in LONG_BY_NATURE):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The scanners themselves: a comment is not code, an import is.
    let text = "// crate::config::Config\nuse crate::config::Config;\n";
    let lines: Vec<_> = code_lines(text).collect();
    assert_eq!(lines, vec![(2, "use crate::config::Config;")]);
    assert!(is_core("src/policy/compile.rs"));
    assert!(is_core("src/filter.rs"));
    assert!(!is_core("src/datapath/worker/mod.rs"));
    assert!(!is_core("src/cli/mod.rs"));
}
