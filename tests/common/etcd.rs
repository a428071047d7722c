//! A private etcd for a test: its own temporary directory, listening only
//! on Unix sockets there (`localhost:2379` for clients, `localhost:2380`
//! for peers, names etcd 3.4 turns into socket files in its working
//! directory), stopped and removed with the guard.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use xpf::kvstore::etcd::Etcd;

pub struct TestEtcd {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
}

impl TestEtcd {
    /// Starts etcd and waits until it answers (`scripts/deps.sh` installs
    /// it; a missing binary fails the test).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new("etcd")
            .current_dir(dir.path())
            .args([
                "--name",
                "test",
                "--data-dir",
                "data",
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
            .expect("etcd (Debian etcd-server; scripts/deps.sh installs it)");
        let endpoint = format!("unix://{}/localhost:2379", dir.path().display());
        let me = Self {
            child,
            dir,
            endpoint,
        };
        // Bounded wait for it to come up; this times nothing.
        for _ in 0..100 {
            if me.dir.path().join("localhost:2379").exists()
                && Etcd::connect(&me.endpoint, Duration::from_secs(2))
                    .and_then(|mut e| e.list("probe/"))
                    .is_ok()
            {
                return me;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not come up in {}", me.dir.path().display());
    }

    pub fn client(&self) -> Etcd {
        Etcd::connect(&self.endpoint, Duration::from_secs(5)).expect("connect to the test etcd")
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
