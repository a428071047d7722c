//! A private etcd for a test: its own temporary directory, listening only
//! on Unix sockets there (`localhost:2379` for clients, `localhost:2380`
//! for peers, names etcd 3.4 turns into socket files in its working
//! directory), stopped and removed with the guard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use xpf::kvstore::etcd::Etcd;
use xpf::labels::LabelSet;

/// Labels as Cilium gives a pod `app` in namespace `default`.
pub fn k8s_labels(app: &str) -> LabelSet {
    LabelSet::from_pairs([
        ("k8s:app", app),
        ("k8s:io.kubernetes.pod.namespace", "default"),
    ])
    .unwrap()
}

/// Node `n`'s address in the kvstore tests.
pub fn node_ip(n: u8) -> std::net::IpAddr {
    [198, 18, 200, n].into()
}

pub struct TestEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub endpoint: String,
}

/// The client socket's file name (in etcd's working directory).
const SOCKET: &str = "localhost:2379";

impl TestEtcd {
    /// Starts etcd and waits until it answers (`scripts/deps.sh` installs
    /// it; a missing binary fails the test).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let endpoint = format!("unix://{}/{SOCKET}", dir.path().display());
        let mut me = Self {
            child: None,
            dir,
            endpoint,
        };
        me.child = Some(me.spawn(me.dir.path()));
        me.wait_up(me.dir.path());
        me
    }

    /// etcd on this store's data, with `cwd` holding its sockets.
    fn spawn(&self, cwd: &Path) -> Child {
        Command::new("etcd")
            .current_dir(cwd)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--name",
                "test",
                "--listen-client-urls",
                "unix://localhost:2379",
                "--advertise-client-urls",
                "unix://localhost:2379",
                "--listen-peer-urls",
                "unix://localhost:2380",
                "--initial-advertise-peer-urls",
                "unix://localhost:2380",
                "--initial-cluster",
                "test=unix://localhost:2380",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian etcd-server; scripts/deps.sh installs it)")
    }

    /// Bounded wait for etcd to answer on the socket in `cwd`; this times
    /// nothing.
    fn wait_up(&self, cwd: &Path) {
        let endpoint = format!("unix://{}/{SOCKET}", cwd.display());
        for _ in 0..100 {
            if cwd.join(SOCKET).exists()
                && Etcd::connect(&endpoint, Duration::from_secs(2))
                    .and_then(|mut e| e.list("probe/"))
                    .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not come up in {}", cwd.display());
    }

    pub fn client(&self) -> Etcd {
        Etcd::connect(&self.endpoint, Duration::from_secs(5)).expect("connect to the test etcd")
    }

    /// Stops etcd (SIGKILL: as a crash would); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join(SOCKET));
        let _ = std::fs::remove_file(self.dir.path().join("localhost:2380"));
    }

    /// Starts etcd again on the same data and socket.
    pub fn start_again(&mut self) {
        self.stop();
        self.child = Some(self.spawn(self.dir.path()));
        self.wait_up(self.dir.path());
    }

    /// Starts etcd again on the same data, its sockets in a directory
    /// nobody else knows (clients of [`TestEtcd::endpoint`] cannot reach
    /// it) until [`TestEtcd::move_home`]. Returns that endpoint.
    pub fn start_hidden(&mut self) -> (tempfile::TempDir, String) {
        self.stop();
        let hidden = tempfile::tempdir().expect("a temporary directory");
        self.child = Some(self.spawn(hidden.path()));
        self.wait_up(hidden.path());
        let endpoint = format!("unix://{}/{SOCKET}", hidden.path().display());
        (hidden, endpoint)
    }

    /// Makes an etcd started by [`TestEtcd::start_hidden`] reachable at
    /// [`TestEtcd::endpoint`] again (its socket file moved home).
    pub fn move_home(&self, hidden: &Path) {
        std::fs::rename(hidden.join(SOCKET), self.dir.path().join(SOCKET))
            .expect("move the socket home");
    }

    /// `etcdctl ARGS` (API v3) against `endpoint`.
    pub fn etcdctl_at(endpoint: &str, args: &[&str]) -> Output {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .args(args)
            .output()
            .expect("etcdctl (Debian etcd-client; scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `etcdctl ARGS` against this etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Self::etcdctl_at(&self.endpoint, args)
    }

    /// Where the store's files are.
    #[allow(dead_code)]
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
