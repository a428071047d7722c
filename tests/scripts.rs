//! `scripts/pktgen.sh` on this machine: its help, its dry run, and the
//! kernel-without-pktgen path. None of these sends a packet: the no-pktgen
//! test runs only where /proc/net/pktgen is absent and tells the script not
//! to load the module, and the others are dry runs. Also the help and
//! argument checks of `scripts/fuzz.sh` and `scripts/soak.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pktgen.sh")
}

fn pktgen(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("XPF_PKTGEN_NO_MODPROBE", "1")
        .output()
        .expect("bash runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pktgen_help_documents_the_topology() {
    let out = pktgen(&["-h"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for want in [
        "Usage:",
        "ip netns exec",
        "169.254.1.1",
        "-b BURST",
        "veth",
        "CONFIG_NET_PKTGEN",
        "xpf gen",
    ] {
        assert!(all.contains(want), "help lacks {want:?}:\n{all}");
    }
}

#[test]
fn pktgen_without_kernel_pktgen_points_to_xpf_gen() {
    if Path::new("/proc/net/pktgen").exists() {
        eprintln!(
            "skipped: this kernel has pktgen (/proc/net/pktgen exists), and this test never sends"
        );
        return;
    }
    let out = pktgen(&["-i", "lo", "-m", "00:00:00:00:00:00", "-d", "198.18.0.1"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("CONFIG_NET_PKTGEN"), "{all}");
    assert!(all.contains("xpf gen"), "{all}");
    assert!(
        all.contains("--dev lo --dst-mac 00:00:00:00:00:00"),
        "{all}"
    );
    assert!(all.contains("--dst 198.18.0.1"), "{all}");
    assert!(all.contains("--rate 0 --count 10000000"), "{all}");
    assert!(all.contains("Nothing was sent"), "{all}");
}

#[test]
fn pktgen_dry_run_writes_ranges_as_random_flags() {
    let out = pktgen(&[
        "-D",
        "-i",
        "lo",
        "-m",
        "02:00:00:00:00:01",
        "-d",
        "198.19.0.1-198.19.255.254",
        "-s",
        "198.18.10.2",
        "-p",
        "9",
        "-P",
        "1024-65535",
        "-x",
        "64",
        "-n",
        "0",
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let dev = "> /proc/net/pktgen/lo@0";
    for cmd in [
        "count 0",
        "pkt_size 64",
        "burst 1",
        "dst_mac 02:00:00:00:00:01",
        "dst_min 198.19.0.1",
        "dst_max 198.19.255.254",
        "flag IPDST_RND",
        "src_min 198.18.10.2",
        "udp_dst_min 9",
        "udp_src_max 65535",
        "flag UDPSRC_RND",
    ] {
        assert!(
            all.contains(&format!("echo '{cmd}' {dev}")),
            "no {cmd:?}:\n{all}"
        );
    }
    // Single values are not randomised.
    assert!(
        !all.contains("UDPDST_RND") && !all.contains("IPSRC_RND"),
        "{all}"
    );
    assert!(all.contains("echo 'add_device lo@0' > /proc/net/pktgen/kpktgend_0"));
    assert!(all
        .trim_end()
        .ends_with("echo 'start' > /proc/net/pktgen/pgctrl"));
}

#[test]
fn pktgen_rejects_bad_input() {
    for args in [
        "-m 00:00:00:00:00:00 -d 198.18.0.1",
        "-i lo -m 00:00:00:00:00 -d 198.18.0.1",
        "-i lo -m 00:00:00:00:00:00 -d 198.18.0.9-198.18.0.1",
        "-i lo -m 00:00:00:00:00:00 -d 198.18.0.1 -p 1-70000",
        "-i lo -m 00:00:00:00:00:00 -d 2001:db8::1",
    ] {
        let args: Vec<&str> = ["-D"].into_iter().chain(args.split(' ')).collect();
        let out = pktgen(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
    }
}

#[test]
fn pktgen_on_a_veth_uses_burst_1() {
    // SAFETY: geteuid() has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    // A throwaway network namespace that vanishes with the command.
    let body = format!(
        "ip link add xpftest0 type veth peer name xpftest1 && \
         bash {} -D -i xpftest0 -m 02:00:00:00:00:01 -d 198.19.0.1 -b 32 -c 4",
        script().display()
    );
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", &body])
        .env("XPF_PKTGEN_NO_MODPROBE", "1")
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: no unshare(1)");
        return;
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("lacks IFF_TX_SKB_SHARING"), "{all}");
    assert!(
        all.contains("echo 'burst 1' > /proc/net/pktgen/xpftest0@0"),
        "{all}"
    );
    assert!(
        all.contains("echo 'clone_skb 0' > /proc/net/pktgen/xpftest0@0"),
        "{all}"
    );
}

/// `scripts/NAME ARGS`, output and status.
fn run_script(name: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join(name),
        )
        .args(args)
        .output()
        .expect("bash runs")
}

#[test]
fn fuzz_and_soak_explain_themselves_and_refuse_bad_arguments() {
    // Neither builds, fuzzes nor soaks: help and argument checks come
    // first.
    for (script, usage) in [
        ("fuzz.sh", "scripts/fuzz.sh TARGET SECONDS"),
        ("soak.sh", "scripts/soak.sh [--minutes N]"),
    ] {
        let out = run_script(script, &["--help"]);
        assert!(out.status.success(), "{script}: {}", text(&out));
        assert!(text(&out).contains(usage), "{script}: {}", text(&out));
    }
    for (script, args, says) in [
        ("fuzz.sh", &["nope", "5"][..], "unknown target 'nope'"),
        (
            "fuzz.sh",
            &["parse", "soon"],
            "SECONDS must be a positive whole number",
        ),
        ("fuzz.sh", &["parse"], "scripts/fuzz.sh TARGET SECONDS"),
        ("soak.sh", &["--minutes", "1"], "at least 2"),
        ("soak.sh", &["--hours", "1"], "unknown argument '--hours'"),
    ] {
        let out = run_script(script, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{script} {args:?}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(says),
            "{script} {args:?}: {}",
            text(&out)
        );
    }
}
