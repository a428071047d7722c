//! iproute2's `ip`, run as a child process in the calling thread's network
//! namespace. The one place xpf spawns it; callers turn its errors into
//! their own, naming what they were doing.

use std::process::Command;

/// Why an `ip` command failed.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    /// `ip` could not be started.
    #[error("cannot run `ip` (is iproute2 installed?)")]
    Spawn(#[source] std::io::Error),
    /// `ip` ran and refused; `stderr` is what it said.
    #[error("`ip {command}`: {stderr}")]
    Failed { command: String, stderr: String },
    /// `ip -j` printed something that is not JSON.
    #[error("`ip {command}` printed no JSON: {message}")]
    Json { command: String, message: String },
}

impl IpError {
    /// What `ip` said when it refused, if it ran.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            IpError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Runs `ip ARGS`; its standard output.
pub fn run(args: &[&str]) -> Result<String, IpError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(IpError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(IpError::Failed {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip -j ARGS` and parses what it prints.
pub fn json(args: &[&str]) -> Result<serde_json::Value, IpError> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let text = run(&all)?;
    serde_json::from_str(&text).map_err(|e| IpError::Json {
        command: all.join(" "),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_command_and_what_ip_said() {
        // Reads only: asks for a link no machine has.
        let e = run(&["link", "show", "xpf-no-such"]).unwrap_err();
        assert!(matches!(e, IpError::Failed { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with("`ip link show xpf-no-such`: "), "{text}");
        assert!(e.stderr().is_some_and(|s| !s.is_empty()), "{e:?}");
    }

    #[test]
    fn json_parses_what_ip_prints() {
        let links = json(&["link", "show", "lo"]).unwrap();
        assert_eq!(links[0]["ifname"], "lo");
    }
}
