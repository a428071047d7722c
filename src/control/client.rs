//! A client of the control API ([`super::api`]): one HTTP/1.1 request per
//! connection over the Unix socket, `Connection: close`, JSON in and out.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach xpf at {path}: {source} (is `xpf run` running in this network namespace? \
         name its socket with --api PATH)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to xpf at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("xpf at {path} answered something that is not HTTP with JSON: {message}")]
    Malformed { path: String, message: String },
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })
}

/// Sends `method path` with `body` (JSON) and returns the status and the
/// JSON answer.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ClientError> {
    let at = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: at.clone(),
        source,
    };
    let mut stream = connect(socket)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: xpf\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).map_err(|message| ClientError::Malformed { path: at, message })
}

/// Opens a stream (`GET path`) and calls `line` with every non-blank line
/// of its body until the daemon closes it or `line` returns false. A
/// refusal comes back as `Ok(Err((status, answer)))`.
pub fn stream(
    socket: &Path,
    path: &str,
    mut line: impl FnMut(&str) -> bool,
) -> Result<Result<(), (u16, Value)>, ClientError> {
    use std::io::BufRead;
    let at = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: at.clone(),
        source,
    };
    let mut stream = connect(socket)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: xpf\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).map_err(io)? == 0 || l == "\r\n" {
            break;
        }
        head.push_str(&l);
    }
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ClientError::Malformed {
            path: at.clone(),
            message: format!("bad status line in {head:?}"),
        })?;
    if status != 200 {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).map_err(io)?;
        let mut raw = head.into_bytes();
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&rest);
        let (status, answer) =
            parse_response(&raw).map_err(|message| ClientError::Malformed { path: at, message })?;
        return Ok(Err((status, answer)));
    }
    let mut l = String::new();
    loop {
        l.clear();
        if reader.read_line(&mut l).map_err(io)? == 0 {
            return Ok(Ok(()));
        }
        let text = l.trim();
        if !text.is_empty() && !line(text) {
            return Ok(Ok(()));
        }
    }
}

/// Status and JSON body of a complete HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Result<(u16, Value), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no end of headers".to_string())?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        unchunk(body)?
    } else {
        body.to_string()
    };
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).map_err(|e| format!("body: {e}"))?
    };
    Ok((status, value))
}

fn unchunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("truncated chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("truncated chunk")?);
        s = rest.get(n + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = b"HTTP/1.1 409 Conflict\r\nContent-Length: 17\r\n\r\n{\"error\": \"no\"}\n";
        let (s, v) = parse_response(r).unwrap();
        assert_eq!((s, v["error"].as_str()), (409, Some("no")));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap().1["a"], 1);
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn no_daemon_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = call(&dir.path().join("api.sock"), "GET", "/v1/status", None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("api.sock") && text.contains("--api"),
            "{text}"
        );
    }
}
