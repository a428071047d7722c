//! The control API of `xpf run`: HTTP/1.1 with JSON bodies on a Unix
//! socket (mode 0600, so root only), served by its own thread.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | | the daemon's status |
//! | POST | `/v1/reload` | | what the reload changed |
//! | PUT | `/v1/ipcache` | `{"prefix": "198.18.9.0/24", "labels": {"app": "db"}}`, or `{"entries": [...]}` of those | what changed |
//! | DELETE | `/v1/ipcache` | `{"prefix": "198.18.9.0/24"}`, or `{"prefixes": [...]}` | what changed |
//! | PUT | `/v1/endpoints` | `{"name": "web", "labels": {"app": "web"}, "ipv4": "198.18.10.9"}` | what changed |
//! | DELETE | `/v1/endpoints` | `{"name": "web"}` | what changed |
//! | GET | `/v1/monitor?type=drop\|verdict\|all&endpoint=NAME` | | a stream of flow JSON lines, until the client hangs up |
//!
//! A refused request answers 400 (the request is wrong), 404 (no such
//! path or entry) or 409 (the change cannot be applied; nothing changed),
//! each with `{"error": "..."}`. `curl --unix-socket PATH http://xpf/v1/status`
//! works as a client.
//!
//! The thread never touches the datapath: it turns each request into a
//! [`Command`] and hands it to the control loop of `xpf run` (the only
//! writer of the engine) through a channel, then waits for the loop's
//! [`Reply`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

pub use super::flows::Kind;

/// Largest request body read (a batch of ipcache entries).
const MAX_BODY: u64 = 16 << 20;
/// Seconds of silence after which a stream writes a blank line.
const KEEPALIVE_SECS: u32 = 5;
/// How long a request waits for the control loop.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Status,
    Reload,
    /// One or more entries, applied together.
    IpcacheUpsert {
        entries: Vec<(IpNet, BTreeMap<String, String>)>,
    },
    /// One or more prefixes, removed together.
    IpcacheDelete {
        prefixes: Vec<IpNet>,
    },
    Monitor {
        kind: Kind,
        endpoint: Option<String>,
    },
    EndpointAdd {
        name: String,
        labels: BTreeMap<String, String>,
        ipv4: Option<std::net::Ipv4Addr>,
        ipv6: Option<std::net::Ipv6Addr>,
    },
    EndpointRemove {
        name: String,
    },
}

/// The control loop's answer: an HTTP status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    /// A refusal: `status` with `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

/// What the control loop answers: a reply, or a stream of lines.
pub enum Answer {
    Reply(Reply),
    Stream(Lines),
}

/// The lines of a stream, as the API thread takes them; when it is done
/// (the client hung up) it drops them, and the sender sees [`Lines::alive`]
/// turn false.
pub struct Lines {
    pub rx: Receiver<String>,
    alive: Arc<AtomicBool>,
}

impl Lines {
    /// The receiving side of a stream, and the flag that says whether it
    /// is still read.
    pub fn new(rx: Receiver<String>) -> (Self, Arc<AtomicBool>) {
        let alive = Arc::new(AtomicBool::new(true));
        (
            Self {
                rx,
                alive: alive.clone(),
            },
            alive,
        )
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

/// A command on its way to the control loop, with where to answer.
pub struct Request {
    pub command: Command,
    reply: Sender<Answer>,
}

impl Request {
    pub fn answer(self, reply: Reply) {
        // The client may have gone; nothing to do then.
        let _ = self.reply.send(Answer::Reply(reply));
    }

    /// Answers with a stream: every line sent on the other side of `lines`
    /// goes to the client, until either side hangs up.
    pub fn stream(self, lines: Lines) {
        let _ = self.reply.send(Answer::Stream(lines));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    prefix: String,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertMany {
    entries: Vec<UpsertBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteMany {
    prefixes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ipv4: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    ipv6: Option<std::net::Ipv6Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

/// A prefix as given: a CIDR or a single address; host bits are refused
/// rather than silently cleared.
pub fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR prefix or an address"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set (did you mean {})?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The `key=value` pairs of a query string (no percent-decoding: the
/// values xpf takes are names).
fn query(q: &str) -> Vec<(&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// Turns an HTTP request into a command, or the refusal to send back.
/// `path` may carry a query string.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Command, Reply> {
    let (path, q) = path.split_once('?').unwrap_or((path, ""));
    let json = |what: &str| -> Result<Value, Reply> {
        serde_json::from_slice(body)
            .map_err(|e| Reply::error(400, format!("{what}: the body is not JSON: {e}")))
    };
    match (method, path) {
        ("GET", "/v1/status") => Ok(Command::Status),
        ("GET", "/v1/monitor") => {
            let (mut kind, mut endpoint) = (Kind::All, None);
            for (k, v) in query(q) {
                match k {
                    "type" => {
                        kind = Kind::parse(v).ok_or_else(|| {
                            Reply::error(
                                400,
                                format!("type: `{v}` is not one of: drop, verdict, all"),
                            )
                        })?
                    }
                    "endpoint" => endpoint = Some(v.to_string()),
                    other => {
                        return Err(Reply::error(
                            400,
                            format!("monitor: unknown parameter `{other}` (known: type, endpoint)"),
                        ))
                    }
                }
            }
            Ok(Command::Monitor { kind, endpoint })
        }
        ("POST", "/v1/reload") => Ok(Command::Reload),
        ("PUT", "/v1/ipcache") => {
            let v = json("ipcache upsert")?;
            let bad = |e: serde_json::Error| Reply::error(400, format!("ipcache upsert: {e}"));
            let bodies = if v.get("entries").is_some() {
                serde_json::from_value::<UpsertMany>(v)
                    .map_err(bad)?
                    .entries
            } else {
                vec![serde_json::from_value::<UpsertBody>(v).map_err(bad)?]
            };
            let entries = bodies
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    let prefix = parse_prefix(&b.prefix)
                        .map_err(|m| Reply::error(400, format!("entries[{i}].prefix: {m}")))?;
                    Ok((prefix, b.labels))
                })
                .collect::<Result<_, Reply>>()?;
            Ok(Command::IpcacheUpsert { entries })
        }
        ("DELETE", "/v1/ipcache") => {
            let v = json("ipcache delete")?;
            let bad = |e: serde_json::Error| Reply::error(400, format!("ipcache delete: {e}"));
            let texts = if v.get("prefixes").is_some() {
                serde_json::from_value::<DeleteMany>(v)
                    .map_err(bad)?
                    .prefixes
            } else {
                vec![serde_json::from_value::<DeleteBody>(v).map_err(bad)?.prefix]
            };
            let prefixes = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    parse_prefix(t).map_err(|m| Reply::error(400, format!("prefixes[{i}]: {m}")))
                })
                .collect::<Result<_, Reply>>()?;
            Ok(Command::IpcacheDelete { prefixes })
        }
        ("PUT", "/v1/endpoints") => {
            let b: EndpointBody = serde_json::from_value(json("endpoint add")?)
                .map_err(|e| Reply::error(400, format!("endpoint add: {e}")))?;
            Ok(Command::EndpointAdd {
                name: b.name,
                labels: b.labels,
                ipv4: b.ipv4,
                ipv6: b.ipv6,
            })
        }
        ("DELETE", "/v1/endpoints") => {
            let b: NameBody = serde_json::from_value(json("endpoint remove")?)
                .map_err(|e| Reply::error(400, format!("endpoint remove: {e}")))?;
            Ok(Command::EndpointRemove { name: b.name })
        }
        (_, "/v1/status" | "/v1/reload" | "/v1/ipcache" | "/v1/monitor" | "/v1/endpoints") => Err(
            Reply::error(405, format!("{method} is not allowed on {path}")),
        ),
        _ => Err(Reply::error(404, format!("no such path: {path}"))),
    }
}

/// The API thread; stops and removes its socket when dropped.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `path` (a stale socket there is replaced; the folder is
    /// created) and forwards every request to `control`.
    pub fn start(path: &Path, control: Sender<Request>) -> std::io::Result<Self> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            std::io::Error::other(format!("API socket {}: {what}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", &e))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing a stale socket", &e)),
        }
        let server = tiny_http::Server::http_unix(path).map_err(|e| io("binding", &e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("chmod 0600", &e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xpf-api".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(100)) {
                        Ok(Some(req)) => serve_one(req, &control),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| io("starting its thread", &e))?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(mut req: tiny_http::Request, control: &Sender<Request>) {
    let mut body = Vec::new();
    let read = req.as_reader().take(MAX_BODY).read_to_end(&mut body);
    let method = req.method().as_str().to_string();
    let path = req.url().to_string();
    let reply = match read {
        Err(e) => Reply::error(400, format!("reading the body: {e}")),
        Ok(_) => match route(&method, &path, &body) {
            Err(refusal) => refusal,
            Ok(command) => {
                let (tx, rx) = bounded(1);
                if control.send(Request { command, reply: tx }).is_err() {
                    Reply::error(503, "xpf is stopping")
                } else {
                    match rx.recv_timeout(REPLY_TIMEOUT) {
                        Ok(Answer::Reply(r)) => r,
                        Ok(Answer::Stream(lines)) => {
                            // Its own thread: a monitor runs until its
                            // client hangs up, and the API must go on.
                            std::thread::spawn(move || stream(req, lines));
                            return;
                        }
                        Err(_) => Reply::error(504, "the control loop did not answer in time"),
                    }
                }
            }
        },
    };
    let text = format!("{}\n", reply.body);
    let response = tiny_http::Response::from_string(text)
        .with_status_code(reply.status)
        .with_header(
            tiny_http::Header::from_bytes("Content-Type", "application/json")
                .expect("a valid header"),
        );
    let _ = req.respond(response);
}

/// Writes `lines` to the client as they come (newline-delimited JSON, the
/// body ending when the connection closes), until the client or the
/// sender goes away.
fn stream(req: tiny_http::Request, lines: Lines) {
    let mut out = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if out
        .write_all(head.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return;
    }
    let mut quiet = 0;
    loop {
        match lines.rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                if out
                    .write_all(line.as_bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                // A blank line now and then: the only way to learn that
                // the client left is a write that fails.
                quiet += 1;
                if quiet >= KEEPALIVE_SECS {
                    quiet = 0;
                    if out.write_all(b"\n").and_then(|_| out.flush()).is_err() {
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refusals() {
        assert_eq!(route("GET", "/v1/status", b""), Ok(Command::Status));
        assert_eq!(route("POST", "/v1/reload", b""), Ok(Command::Reload));
        assert_eq!(
            route(
                "PUT",
                "/v1/ipcache",
                br#"{"prefix": "198.18.9.0/24", "labels": {"app": "db"}}"#
            ),
            Ok(Command::IpcacheUpsert {
                entries: vec![(
                    "198.18.9.0/24".parse().unwrap(),
                    [("app".to_string(), "db".to_string())].into()
                )],
            })
        );
        assert_eq!(
            route("DELETE", "/v1/ipcache", br#"{"prefix": "2001:db8::1"}"#),
            Ok(Command::IpcacheDelete {
                prefixes: vec!["2001:db8::1/128".parse().unwrap()]
            })
        );
        let many = route(
            "PUT",
            "/v1/ipcache",
            br#"{"entries": [{"prefix": "198.18.9.0/24", "labels": {"a": "b"}}, {"prefix": "198.18.10.0/24", "labels": {"a": "b"}}]}"#,
        );
        assert!(matches!(many, Ok(Command::IpcacheUpsert { entries }) if entries.len() == 2));
        let refused = |m, p, b: &[u8]| route(m, p, b).unwrap_err();
        let second = refused(
            "DELETE",
            "/v1/ipcache",
            br#"{"prefixes": ["198.18.9.0/24", "nope"]}"#,
        );
        assert!(second.body["error"]
            .as_str()
            .unwrap()
            .starts_with("prefixes[1]"));
        assert_eq!(refused("GET", "/v2/status", b"").status, 404);
        assert_eq!(refused("GET", "/v1/reload", b"").status, 405);
        let bits = refused(
            "PUT",
            "/v1/ipcache",
            br#"{"prefix": "198.18.9.1/24", "labels": {}}"#,
        );
        assert_eq!(bits.status, 400);
        assert!(bits.body["error"]
            .as_str()
            .unwrap()
            .contains("198.18.9.0/24"));
        let unknown = refused(
            "PUT",
            "/v1/ipcache",
            br#"{"prefix": "198.18.9.0/24", "label": {}}"#,
        );
        assert!(unknown.body["error"].as_str().unwrap().contains("label"));
    }

    #[test]
    fn a_request_reaches_the_control_loop_and_its_answer_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let server = ApiServer::start(&path, tx).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "root only");
        let control = std::thread::spawn(move || {
            let req = rx.recv().unwrap();
            assert_eq!(req.command, Command::Status);
            req.answer(Reply::ok(json!({"revision": 7})));
        });
        let (status, body) = super::super::client::call(&path, "GET", "/v1/status", None).unwrap();
        control.join().unwrap();
        assert_eq!((status, body["revision"].as_u64()), (200, Some(7)));
        let (status, body) = super::super::client::call(&path, "GET", "/nope", None).unwrap();
        assert_eq!(status, 404);
        assert!(body["error"].as_str().unwrap().contains("/nope"));
        drop(server);
        assert!(!path.exists(), "the socket goes with the server");
    }
}
