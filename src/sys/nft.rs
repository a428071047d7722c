//! nftables' `nft`, run as a child process in the calling thread's network
//! namespace. The one place xpf spawns it (the benchmark's `kernel-nft`
//! baseline); callers turn its errors into their own.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why an `nft` command failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started.
    #[error("cannot run `nft` (is nftables installed?)")]
    Spawn(#[source] std::io::Error),
    /// `nft` ran and refused; `stderr` is what it said.
    #[error("`nft {command}`: {stderr}")]
    Failed { command: String, stderr: String },
}

impl NftError {
    /// What `nft` said when it refused, if it ran.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            NftError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Applies `ruleset`, written in nft's file syntax, as one transaction
/// (`nft -f -`, the ruleset on standard input): all of it or, if nft
/// refuses any of it, none.
pub fn apply(ruleset: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut stdin = child.stdin.take().expect("piped");
    // Written from a second thread so that nft's output never fills a pipe
    // while this one is still writing. A write that fails (nft gave up
    // early) shows in nft's exit status.
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(ruleset.as_bytes());
        });
        child.wait_with_output()
    })
    .map_err(NftError::Spawn)?;
    check("-f -", out)
}

/// Deletes the table `name` of address family `family` (`inet`, `ip`, ...)
/// and everything in it.
pub fn delete_table(family: &str, name: &str) -> Result<(), NftError> {
    let out = Command::new("nft")
        .args(["delete", "table", family, name])
        .output()
        .map_err(NftError::Spawn)?;
    check(&format!("delete table {family} {name}"), out)
}

fn check(command: &str, out: std::process::Output) -> Result<(), NftError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed {
            command: command.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Both change nothing: nft refuses before it commits.

    #[test]
    fn a_ruleset_nft_cannot_parse_is_refused_with_what_nft_said() {
        let e = apply("table inet xpf_test {\n  this is not nft\n}\n").unwrap_err();
        assert!(matches!(e, NftError::Failed { .. }), "{e:?}");
        assert!(e.to_string().starts_with("`nft -f -`: "), "{e}");
        assert!(e.stderr().is_some_and(|s| !s.is_empty()), "{e:?}");
    }

    #[test]
    fn deleting_a_missing_table_is_refused() {
        let e = delete_table("inet", "xpf_no_such_table").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`nft delete table inet xpf_no_such_table`: "),
            "{e}"
        );
    }
}
