//! Writes the starting corpora of the fuzz targets into OUTDIR/{parse,filter,
//! policy}: frames made with `xpf::wire::build` and edited the way
//! `src/wire/tests.rs` edits them (IPv4 options and fragments, IPv6
//! extension headers, ICMP errors, refused frames); frame sequences for
//! `filter` that walk the example world's policies, conntrack and fragment
//! paths; and the example config and policies for `policy`.
//!
//! Frames use the example endpoints' addresses so each one is a useful
//! `filter` step too, not just a spoofed-source drop.
//!
//! Usage: seeds OUTDIR

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use xpf::wire::build::{self, FrameAddrs, Transport};
use xpf::wire::edit::{
    auth_ext, fix_ipv4_checksum, fragment_ext, ipv4_options, mark_v4_fragment, options_ext,
    routing_ext, set_u16, splice_v6, with_l4_len, Ext,
};
use xpf::wire::tcp_flags::{ACK, FIN, SYN};
use xpf_fuzz::{example_config, push_step};

const FRONTEND: u8 = 0;
const BACKEND: u8 = 1;
const DB: u8 = 2;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

fn built(src: &str, dst: &str, transport: Transport, payload_len: usize) -> Vec<u8> {
    let addrs = FrameAddrs {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: ip(src),
        dst: ip(dst),
    };
    let mut buf = vec![0u8; 2048];
    let n = build::frame(&mut buf, &addrs, transport, payload_len).expect("seed frame fits");
    buf.truncate(n);
    buf
}

fn udp(sport: u16, dport: u16) -> Transport {
    Transport::Udp { sport, dport }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Transport {
    Transport::Tcp {
        sport,
        dport,
        flags,
    }
}

fn echo(request: bool, identifier: u16) -> Transport {
    Transport::IcmpEcho {
        request,
        identifier,
        sequence: 1,
    }
}

/// Fills an IPv4 header out to IHL 15 with NOP options.
fn v4_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    ipv4_options(&mut out, &[1u8; 40]);
    out
}

/// An ICMP (IPv4) error of `icmp_type`/`code` from `src` to `dst` quoting
/// the IP header and first 8 upper-layer bytes of `quoted`.
fn icmp4_error(src: &str, dst: &str, icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut f = built(src, dst, udp(0, 0), 0);
    f.truncate(34);
    f[23] = 1;
    f.extend_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&quoted[14..14 + 28]);
    let total = (f.len() - 14) as u16;
    set_u16(&mut f, 16, total);
    fix_ipv4_checksum(&mut f);
    f
}

/// An ICMPv6 error quoting the IPv6 header and first 8 upper-layer bytes.
fn icmp6_error(src: &str, dst: &str, icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut f = built(src, dst, udp(0, 0), 0);
    f.truncate(54);
    f[20] = 58;
    f.extend_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&quoted[14..14 + 48]);
    let payload = (f.len() - 54) as u16;
    set_u16(&mut f, 18, payload);
    f
}

// The example world (examples/xpf.yaml).
const FE4: &str = "198.18.10.2";
const BE4: &str = "198.18.10.3";
const DB4: &str = "198.18.10.4";
const FE6: &str = "2001:db8:10::2";
const BE6: &str = "2001:db8:10::3";
const DB6: &str = "2001:db8:10::4";
const HOST4: &str = "198.18.0.1";
const HOST6: &str = "2001:db8::1";
const WORLD4: &str = "198.19.1.1";
const QUARANTINE4: &str = "198.19.99.1";
const BACKUP4: &str = "198.19.200.5";

/// The endpoint index that owns `addr`, or the frontend for addresses no
/// endpoint owns.
fn sender_of(addr: IpAddr) -> u8 {
    [(BE4, BACKEND), (BE6, BACKEND), (DB4, DB), (DB6, DB)]
        .iter()
        .find(|(a, _)| ip(a) == addr)
        .map_or(FRONTEND, |(_, i)| *i)
}

/// Single frames: every protocol over both families, then the edits
/// `src/wire/tests.rs` makes, then frames `parse` refuses.
fn frames() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (fam, src, dst) in [("v4", FE4, BE4), ("v6", FE6, BE6)] {
        let transports = [
            ("udp", udp(40000, 53)),
            ("tcp-syn", tcp(40001, 8080, SYN)),
            ("tcp-synack", tcp(8080, 40001, SYN | ACK)),
            (
                "sctp",
                Transport::Sctp {
                    sport: 40002,
                    dport: 9,
                },
            ),
            ("echo-request", echo(true, 77)),
            ("echo-reply", echo(false, 77)),
        ];
        for (name, t) in transports {
            out.push((format!("{fam}-{name}"), built(src, dst, t, 8)));
        }
    }

    let syn4 = built(FE4, BE4, tcp(40001, 8080, SYN), 3);
    let syn6 = built(FE6, BE6, tcp(40001, 8080, SYN), 3);
    let udp4 = built(BE4, HOST4, udp(41000, 53), 16);
    let udp6 = built(BE6, HOST6, udp(41000, 53), 16);
    out.push(("v4-options".into(), v4_options(&syn4)));
    out.push((
        "v4-first-fragment".into(),
        mark_v4_fragment(udp4.clone(), 0x4321, true, 0),
    ));
    out.push((
        "v4-later-fragment".into(),
        mark_v4_fragment(with_l4_len(udp4.clone(), 3), 0x4321, false, 15),
    ));
    out.push((
        "v6-hbh-dst-first-fragment".into(),
        splice_v6(
            &udp6,
            &[
                options_ext(0, 0),
                options_ext(60, 1),
                fragment_ext(0, true, 0xdead_beef),
            ],
        ),
    ));
    out.push((
        "v6-later-fragment".into(),
        splice_v6(
            &with_l4_len(udp6.clone(), 5),
            &[options_ext(0, 0), fragment_ext(7, false, 0xdead_beef)],
        ),
    ));
    out.push((
        "v6-atomic-fragment".into(),
        splice_v6(&udp6, &[fragment_ext(0, false, 5)]),
    ));
    out.push((
        "v6-routing-ah".into(),
        splice_v6(&syn6, &[routing_ext(4, 0, std::net::Ipv6Addr::UNSPECIFIED), auth_ext(4)]),
    ));
    let mut esp = splice_v6(&udp6, &[options_ext(0, 0)]);
    esp[54] = 50;
    out.push(("v6-esp".into(), esp));
    let mut padded = built(FE4, BE4, udp(40000, 53), 2);
    padded.resize(padded.len() + 20, 0xaa);
    out.push(("v4-ethernet-padding".into(), padded));

    let probe4 = built(BE4, FE4, udp(8080, 40001), 0);
    out.push((
        "v4-icmp-unreachable".into(),
        icmp4_error(FE4, BE4, 3, 3, &probe4),
    ));
    let probe6 = built(BE6, FE6, udp(8080, 40001), 0);
    out.push((
        "v6-icmp-unreachable".into(),
        icmp6_error(FE6, BE6, 1, 4, &probe6),
    ));

    let mut vlan = syn4.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    out.push(("vlan-tagged".into(), vlan));
    let mut arp = syn4.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    out.push(("not-ip".into(), arp));
    let mut short = syn4.clone();
    short.truncate(14 + 20 + 10);
    out.push(("v4-truncated-tcp".into(), short));
    let mut ihl = syn4;
    ihl[14] = 0x44;
    out.push(("v4-ihl-too-small".into(), ihl));
    let too_many: Vec<Ext> = (0..9).map(|_| options_ext(60, 0)).collect();
    out.push(("v6-too-many-ext".into(), splice_v6(&udp6, &too_many)));
    out
}

/// Frame sequences over the example world's policies.
fn sequences() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut seq = |name: &'static str, steps: &[(u8, u8, Vec<u8>)]| {
        let mut data = Vec::new();
        for (sender, clock, frame) in steps {
            push_step(&mut data, *sender, *clock, frame);
        }
        out.push((name, data));
    };

    for (name, fe, be) in [
        ("tcp-handshake-v4", FE4, BE4),
        ("tcp-handshake-v6", FE6, BE6),
    ] {
        seq(
            name,
            &[
                (FRONTEND, 0, built(fe, be, tcp(40000, 8080, SYN), 0)),
                (BACKEND, 1, built(be, fe, tcp(8080, 40000, SYN | ACK), 0)),
                (FRONTEND, 1, built(fe, be, tcp(40000, 8080, ACK), 10)),
                (BACKEND, 1, built(be, fe, tcp(8080, 40000, FIN | ACK), 0)),
                (FRONTEND, 1, built(fe, be, tcp(40000, 8080, FIN | ACK), 0)),
                // Past every timeout: the reply is a new flow again.
                (BACKEND, 0xff, built(be, fe, tcp(8080, 40000, ACK), 0)),
            ],
        );
    }
    seq(
        "ping",
        &[
            (FRONTEND, 0, built(FE4, BE4, echo(true, 77), 8)),
            (BACKEND, 1, built(BE4, FE4, echo(false, 77), 8)),
            (FRONTEND, 0, built(FE6, BE6, echo(true, 78), 8)),
            (BACKEND, 1, built(BE6, FE6, echo(false, 78), 8)),
        ],
    );
    seq(
        "world-and-quarantine",
        &[
            (FRONTEND, 0, built(FE4, WORLD4, tcp(40000, 443, SYN), 0)),
            (
                FRONTEND,
                0,
                built(FE4, QUARANTINE4, tcp(40000, 443, SYN), 0),
            ),
            (BACKEND, 0, built(BE4, BACKUP4, tcp(41000, 873, SYN), 0)),
            (DB, 0, built(DB4, WORLD4, udp(5000, 53), 0)),
        ],
    );
    seq(
        "db-answers-but-opens-nothing",
        &[
            (BACKEND, 0, built(BE4, DB4, tcp(41000, 5432, SYN), 0)),
            (DB, 0, built(DB4, BE4, tcp(5432, 41000, SYN | ACK), 0)),
            (DB, 0, built(DB4, BE4, tcp(5432, 41001, SYN), 0)),
            (BACKEND, 0, built(BE6, DB6, tcp(41000, 5432, SYN), 0)),
            (DB, 0, built(DB6, BE6, tcp(5432, 41000, SYN | ACK), 0)),
        ],
    );
    let allowed = built(BE4, HOST4, udp(41000, 53), 16);
    let denied = built(BE4, HOST4, udp(41000, 54), 16);
    seq(
        "fragments-v4",
        &[
            (BACKEND, 0, mark_v4_fragment(allowed.clone(), 9, false, 1)),
            (BACKEND, 0, mark_v4_fragment(allowed.clone(), 1, true, 0)),
            (BACKEND, 1, mark_v4_fragment(allowed.clone(), 1, false, 1)),
            (BACKEND, 0, mark_v4_fragment(denied.clone(), 2, true, 0)),
            (BACKEND, 1, mark_v4_fragment(denied, 2, false, 1)),
            // Past the fragment TTL.
            (BACKEND, 40, mark_v4_fragment(allowed, 1, false, 2)),
        ],
    );
    let udp6 = built(BE6, HOST6, udp(41000, 53), 16);
    seq(
        "fragments-v6",
        &[
            (BACKEND, 0, splice_v6(&udp6, &[fragment_ext(0, true, 7)])),
            (
                BACKEND,
                1,
                splice_v6(&with_l4_len(udp6.clone(), 8), &[fragment_ext(3, false, 7)]),
            ),
            (
                BACKEND,
                0,
                splice_v6(&with_l4_len(udp6, 8), &[fragment_ext(3, false, 8)]),
            ),
        ],
    );
    // The backend reports that the frontend's flow could not be delivered:
    // an ICMP error about a tracked flow, sent the reply way.
    let syn4 = built(FE4, BE4, tcp(40000, 8080, SYN), 0);
    let syn6 = built(FE6, BE6, tcp(40000, 8080, SYN), 0);
    seq(
        "related-icmp-errors",
        &[
            (FRONTEND, 0, syn4.clone()),
            (BACKEND, 1, icmp4_error(BE4, FE4, 3, 3, &syn4)),
            (FRONTEND, 0, syn6.clone()),
            (BACKEND, 1, icmp6_error(BE6, FE6, 1, 4, &syn6)),
            // Not about a packet sent to the reporter.
            (DB, 1, icmp4_error(DB4, FE4, 3, 3, &syn4)),
        ],
    );
    seq(
        "spoofed-and-refused",
        &[
            (FRONTEND, 0, built(BE4, DB4, tcp(41000, 5432, SYN), 0)),
            (
                FRONTEND,
                0,
                built(FE4, BE4, tcp(40000, 8080, SYN), 0)[..44].to_vec(),
            ),
            (FRONTEND, 0, Vec::new()),
        ],
    );
    out
}

/// Hand-written policies for what the examples do not show: the other
/// kinds, a List, selectors with expressions, port ranges, ingress.
const POLICIES: &[(&str, &str)] = &[
    (
        "network-policy.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: default}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress, Ingress]
  egress:
    - to:
        - podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}
        - ipBlock: {cidr: 198.19.0.0/16, except: [198.19.99.0/24]}
      ports:
        - {port: 8000, endPort: 8100, protocol: TCP}
        - {port: 53, protocol: UDP}
  ingress:
    - from: [{podSelector: {}}]
",
    ),
    (
        "list.yaml",
        "apiVersion: v1
kind: List
items:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: a}
    specs:
      - endpointSelector: {matchLabels: {app: db}}
        egress:
          - toEntities: [world, host]
            toPorts: [{ports: [{port: \"5000\", endPort: 5010, protocol: SCTP}]}]
      - endpointSelector: {matchExpressions: [{key: env, operator: Exists}]}
        enableDefaultDeny: {egress: false, ingress: true}
        egressDeny:
          - toCIDRSet: [{cidr: 2001:db8::/32, except: [2001:db8:10::/48]}]
            icmps: [{fields: [{type: EchoRequest, family: IPv6}, {type: 3}]}]
---
",
    ),
];

fn write_all(dir: &Path, files: &[(impl AsRef<str>, impl AsRef<[u8]>)]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        fs::write(dir.join(name.as_ref()), bytes)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let out: PathBuf = match std::env::args_os().nth(1) {
        Some(d) => d.into(),
        None => {
            eprintln!("usage: seeds OUTDIR");
            std::process::exit(2);
        }
    };
    let mut frames = frames();
    // The hostile-frame corpus the tests run (xpf::hostile): every frame
    // alone for `parse`, every case as one sequence for `filter`.
    let hostile = xpf::hostile::corpus([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let slug = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    let hostile_sequences: Vec<(String, Vec<u8>)> = hostile
        .iter()
        .map(|case| {
            let sender = match case.sender {
                xpf::hostile::FRONTEND => FRONTEND,
                xpf::hostile::BACKEND => BACKEND,
                _ => DB,
            };
            let mut data = Vec::new();
            for f in &case.frames {
                push_step(&mut data, sender, 0, f);
            }
            (format!("hostile-{}", slug(case.name)), data)
        })
        .collect();
    for case in &hostile {
        for (i, f) in case.frames.iter().enumerate() {
            frames.push((format!("hostile-{}-{i}", slug(case.name)), f.clone()));
        }
    }
    write_all(&out.join("parse"), &frames)?;

    // Each frame alone, from the endpoint that owns its source, then the
    // sequences.
    let mut filter: Vec<(String, Vec<u8>)> = frames
        .iter()
        .map(|(name, frame)| {
            let sender = xpf::wire::parse(frame).map_or(FRONTEND, |f| sender_of(f.src));
            let mut data = Vec::new();
            push_step(&mut data, sender, 0, frame);
            (format!("one-{name}"), data)
        })
        .collect();
    filter.extend(sequences().into_iter().map(|(n, d)| (n.to_string(), d)));
    filter.extend(hostile_sequences);
    write_all(&out.join("filter"), &filter)?;

    // The example config and policies as they are, the config without its
    // policy paths (the target only parses configs that name no files), and
    // the hand-written policies.
    let config_path = example_config();
    let config = fs::read_to_string(&config_path)?;
    let inline: String = config
        .lines()
        .take_while(|l| !l.starts_with("policies:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut policy: Vec<(String, String)> = vec![
        ("xpf.yaml".into(), config),
        ("xpf-no-policy-files.yaml".into(), inline),
    ];
    let policy_dir = config_path.with_file_name("policies");
    let mut names: Vec<PathBuf> = fs::read_dir(&policy_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for p in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let name = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        policy.push((name, fs::read_to_string(p)?));
    }
    policy.extend(POLICIES.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    write_all(&out.join("policy"), &policy)?;

    println!(
        "seeds: {} parse, {} filter, {} policy in {}",
        frames.len(),
        filter.len(),
        policy.len(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use xpf::filter::{Action, DropReason, Passed};
    use xpf_fuzz::{advance, steps, World, START};

    use super::*;

    /// Runs a sequence as the `filter` target does and returns the actions.
    fn decide(world: &World, data: &[u8]) -> (Vec<Action>, xpf::filter::Filter) {
        let reader = world.engine.ipcache.reader();
        let view = reader.enter().unwrap();
        let mut filter = world.fresh_filter();
        let mut now = START;
        let actions = steps(data)
            .map(|s| {
                now = advance(now, s.clock);
                filter.decide(usize::from(s.sender), s.frame, &view, now)
            })
            .collect();
        (actions, filter)
    }

    fn sequence(name: &str) -> Vec<u8> {
        sequences()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d)
            .unwrap()
    }

    // If the example policies change, the seeds should still reach the
    // paths they were written for.
    #[test]
    fn sequences_reach_replies_related_errors_and_fragments() {
        let world = World::load();
        let fe = Action::ToEndpoint(FRONTEND.into());
        let be = Action::ToEndpoint(BACKEND.into());

        let (got, _) = decide(&world, &sequence("tcp-handshake-v4"));
        assert_eq!(got[..5], [be, fe, be, fe, be]);
        assert_eq!(got[5], Action::Drop(DropReason::PolicyDefault));

        let (got, filter) = decide(&world, &sequence("related-icmp-errors"));
        assert_eq!(got[..4], [be, fe, be, fe]);
        assert_eq!(got[4], Action::Drop(DropReason::PolicyDefault));
        assert_eq!(
            filter.stats.passed_count(BACKEND.into(), Passed::Related),
            2
        );

        let (got, _) = decide(&world, &sequence("fragments-v4"));
        let drop = Action::Drop;
        assert_eq!(
            got,
            [
                drop(DropReason::FragmentNoFirst),
                Action::ToHost,
                Action::ToHost,
                drop(DropReason::PolicyDefault),
                drop(DropReason::FragmentDenied),
                drop(DropReason::FragmentNoFirst),
            ]
        );
        let (got, _) = decide(&world, &sequence("fragments-v6"));
        assert_eq!(
            got,
            [
                Action::ToHost,
                Action::ToHost,
                drop(DropReason::FragmentNoFirst)
            ]
        );

        let (got, _) = decide(&world, &sequence("world-and-quarantine"));
        assert_eq!(
            got,
            [
                Action::ToHost,
                drop(DropReason::PolicyDenied),
                Action::ToHost,
                drop(DropReason::PolicyDefault),
            ]
        );
    }

    #[test]
    fn single_frames_come_from_their_owner() {
        let world = World::load();
        for (name, frame) in frames() {
            let mut data = Vec::new();
            let sender = xpf::wire::parse(&frame).map_or(FRONTEND, |f| sender_of(f.src));
            push_step(&mut data, sender, 0, &frame);
            let (got, _) = decide(&world, &data);
            assert_ne!(got[0], Action::Drop(DropReason::SpoofedSource), "{name}");
        }
    }
}
