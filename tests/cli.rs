//! The `xpf` binary as a user runs it: verdicts, JSON, exit statuses.

mod common;

use std::process::{Command, Output};

fn xpf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xpf"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("xpf runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "xpf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

const CFG: &str = "examples/xpf.yaml";

#[test]
fn check_prints_verdict_identities_and_reason_as_json() {
    let v = json(&xpf(&[
        "policy",
        "check",
        "--config",
        CFG,
        "--from",
        "frontend",
        "--to",
        "198.18.10.3",
        "--port",
        "8080",
        "--output",
        "json",
    ]));
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(v["rule"]["name"], "frontend-egress");
    assert!(v["reason"].as_str().unwrap().contains("frontend-egress"));
    assert!(v["src_identity"].as_u64().unwrap() >= 256);
    assert_eq!(v["dst_identity"], v["src_identity"].as_u64().unwrap() + 1);

    let v = json(&xpf(&[
        "policy",
        "check",
        "--config",
        CFG,
        "--from",
        "db",
        "--to",
        "2001:db8:10::3",
        "--port",
        "8080",
        "--proto",
        "tcp",
        "--output",
        "json",
    ]));
    assert_eq!(v["verdict"], "denied");
    assert!(v["reason"].as_str().unwrap().contains("default deny"));

    let v = json(&xpf(&[
        "policy",
        "check",
        "--config",
        CFG,
        "--from",
        "frontend",
        "--to",
        "198.19.99.1",
        "--port",
        "443",
        "--output",
        "json",
    ]));
    assert_eq!(v["verdict"], "denied");
    assert_eq!(v["rule"]["section"], "egressDeny");
    assert_eq!(v["dst_labels"], "cidr:198.19.99.0/24,reserved:world");
}

#[test]
fn check_text_and_icmp() {
    let out = xpf(&[
        "policy",
        "check",
        "--config",
        CFG,
        "--from",
        "frontend",
        "--to",
        "2001:db8:10::3",
        "--icmp-type",
        "128",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("icmpv6/type 128: allowed"), "{text}");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--from", "nobody", "--to", "198.18.10.3", "--port", "1"],
            "no endpoint named `nobody`",
        ),
        (
            &["--from", "frontend", "--to", "198.18.10.3"],
            "--port is required",
        ),
        (
            &["--from", "frontend", "--to", "198.18.10.3", "--port", "0"],
            "0",
        ),
        (
            &["--from", "frontend", "--to", "198.18.10.300", "--port", "1"],
            "198.18.10.300",
        ),
        (
            &[
                "--from",
                "frontend",
                "--to",
                "2001:db8::5",
                "--proto",
                "icmp",
            ],
            "does not match",
        ),
        (
            &[
                "--from",
                "frontend",
                "--to",
                "198.18.10.3",
                "--proto",
                "gre",
                "--port",
                "1",
            ],
            "gre",
        ),
    ];
    for (args, what) in cases {
        let mut all = vec!["policy", "check", "--config", CFG];
        all.extend_from_slice(args);
        let out = xpf(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{args:?}: stderr lacks `{what}`: {err}");
        assert!(out.stdout.is_empty());
    }
    let d = common::Dir::new("endpoints: [{name: a, ipv4: 198.18.0.9, labels: {x: y}}]\npolicies: [policies/]\n", &[("p.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: \"99999\"}]}]}]\n")]);
    let cfg = d.config_path();
    let out = xpf(&["policy", "compile", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p.yaml") && err.contains("ports[0].port") && err.contains("99999"),
        "{err}"
    );
}

#[test]
fn compile_identity_and_ipcache_listings() {
    let v = json(&xpf(&[
        "policy", "compile", "--config", CFG, "--output", "json",
    ]));
    let eps = v["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    let fe = eps.iter().find(|e| e["endpoint"] == "frontend").unwrap();
    assert_eq!(fe["default"], "DefaultDeny");
    let rules: Vec<_> = fe["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["rules"].as_array().unwrap().clone())
        .collect();
    assert!(rules
        .iter()
        .any(|r| r["proto"] == "tcp" && r["first"] == 8080 && r["verdict"] == "allow"));

    let v = json(&xpf(&[
        "identity", "list", "--config", CFG, "--output", "json",
    ]));
    let ids = v.as_array().unwrap();
    assert!(ids
        .iter()
        .any(|i| i["identity"] == 1 && i["kind"] == "host"));
    assert!(ids
        .iter()
        .any(|i| i["identity"] == 2 && i["kind"] == "world"));
    assert!(ids
        .iter()
        .any(|i| i["endpoints"] == serde_json::json!(["backend"])
            && i["identity"].as_u64().unwrap() >= 256));
    assert!(ids
        .iter()
        .any(|i| i["identity"].as_u64().unwrap() & (1 << 24) != 0
            && i["labels"][0] == "cidr:198.19.0.0/16"));

    let v = json(&xpf(&[
        "ipcache", "list", "--config", CFG, "--output", "json",
    ]));
    let entries = v.as_array().unwrap();
    assert!(entries.iter().any(|e| e["prefix"] == "198.18.10.4/32"));
    assert!(entries
        .iter()
        .any(|e| e["prefix"] == "198.19.200.0/24" && e["origin"] == "labelled"));
    assert!(entries
        .iter()
        .any(|e| e["prefix"] == "2001:db8::1/128" && e["identity"] == 1));
}

#[test]
fn bench_classify_reports_rate() {
    let v = json(&xpf(&[
        "bench",
        "classify",
        "--ipcache-entries",
        "2000",
        "--rules",
        "50",
        "--identities",
        "20",
        "--seconds",
        "0.2",
        "--output",
        "json",
    ]));
    assert!(v["ns_per_packet"].as_f64().unwrap() > 0.0);
    assert!(v["mpps"].as_f64().unwrap() > 0.0);
    assert_eq!(v["parse_errors"], 0);
    assert!(v["allowed"].as_u64().unwrap() > 0 && v["denied"].as_u64().unwrap() > 0);
    assert!(v["ipcache_entries"].as_u64().unwrap() >= 2000);
}

#[test]
fn datapath_commands_say_they_need_root() {
    // As root (CI), drop to nobody with setpriv; otherwise run as we are.
    let root = unsafe { libc::geteuid() } == 0;
    for cmd in [&["run"][..], &["demo"], &["endpoint", "create"]] {
        let out = if root {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_xpf"))
                .args(cmd)
                .args(["--config", CFG])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .expect("setpriv runs")
        } else {
            let mut args = cmd.to_vec();
            args.extend(["--config", CFG]);
            xpf(&args)
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("needs root"), "{cmd:?}: {err}");
    }
}

#[test]
fn bad_datapath_settings_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, field) in [
        ("datapath: {bind: fast}", "datapath.bind"),
        ("datapath: {attach: turbo}", "datapath.attach"),
        ("datapath: {rx_ring: 1000}", "datapath.rx_ring"),
        ("datapath: {workers: 2, cpus: [0]}", "datapath.cpus"),
        ("datapath: {cpus: [4096]}", "datapath.cpus"),
    ] {
        let path = dir.path().join("xpf.yaml");
        std::fs::write(
            &path,
            format!("endpoints: [{{name: a, ipv4: 198.18.10.2}}]\n{setting}\n"),
        )
        .unwrap();
        let out = xpf(&["policy", "compile", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{setting}: {err}");
        assert!(err.contains(field), "{setting}: {err}");
    }
}

/// Standard error of a failing `xpf ARGS`, which must exit 2.
fn refusal(args: &[&str]) -> String {
    let out = xpf(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        &["identity", "list", "--config", CFG, "--output", "json"][..],
        &["policy", "compile", "--config", CFG, "--output", "json"],
        &["ipcache", "list", "--config", CFG],
    ] {
        // The read end is closed before xpf starts: its first write meets a
        // broken pipe, as under `| head -1` once head has exited.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_xpf"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}");
    }
}

#[test]
fn errors_say_each_cause_once() {
    // A config path that is a folder: read fails, and the OS error once.
    let dir = tempfile::tempdir().unwrap();
    let err = refusal(&["identity", "list", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    // A YAML syntax error gives its position once.
    let d = common::Dir::new("endpoints: [{name: a\n", &[]);
    let err = refusal(&[
        "identity",
        "list",
        "--config",
        d.config_path().to_str().unwrap(),
    ]);
    assert_eq!(
        err.matches("2:1").count() + err.matches("line 2").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_missing_default_config_points_at_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xpf"))
        .args(["identity", "list"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("xpf.yaml: no such config file") && err.contains("--config PATH"),
        "{err}"
    );
}

#[test]
fn messages_name_flags_and_values_as_typed() {
    let err = refusal(&[
        "policy",
        "check",
        "--config",
        CFG,
        "--from",
        "frontend",
        "--to",
        "198.18.10.3",
        "--proto",
        "udp",
    ]);
    assert!(err.contains("--port is required with --proto udp"), "{err}");
    assert!(!err.contains("Udp"), "{err}");
}

#[test]
fn endpoint_help_describes_config() {
    for sub in ["create", "delete", "list"] {
        let out = xpf(&["endpoint", sub, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.contains("--config"))
            .unwrap_or_else(|| panic!("endpoint {sub} --help has no --config: {help}"));
        assert!(line.contains("config file"), "endpoint {sub}: {line}");
    }
}

#[test]
fn the_readme_usage_lines_run_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().filter(|l| l.starts_with("$xpf ")).collect();
    assert!(lines.len() >= 8, "{lines:?}");
    for line in lines {
        let command = line.split(" #").next().unwrap();
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = xpf(&args);
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
