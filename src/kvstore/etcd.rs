//! A blocking etcd client for the control-plane thread: `etcd-client`
//! (async, over tonic) driven by a current-thread tokio runtime that this
//! value owns, so the only runtime in xpf runs where the calls are made,
//! never on a worker.
//!
//! Endpoints are `http://HOST:PORT` or `unix://PATH`. etcd 3.4 listens on
//! a Unix socket only as `unix://localhost:PORT`, which makes a socket file
//! named `localhost:PORT` in its working directory: name that file's full
//! path (`unix:///var/lib/etcd/localhost:2379`). A socket file reaches
//! every network namespace of the machine; a loopback address does not.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    LockOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::runtime::Runtime;

/// Why a kvstore call failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("no kvstore endpoint answered: {0}")]
    NoneAnswered(String),
    #[error("kvstore endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("etcd at {endpoint}: {what}: {source}")]
    Etcd {
        endpoint: String,
        what: String,
        source: etcd_client::Error,
    },
}

/// What a list returned: the keys under a prefix with their values, and
/// the store's revision they were read at (a watch goes on from the next).
#[derive(Debug, Default)]
pub struct Listing {
    pub pairs: Vec<(String, Vec<u8>)>,
    pub revision: i64,
}

/// One key of [`Etcd::list_entries`], with the revision of its last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One write of a transaction ([`Etcd::write_all`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    /// Every key under a prefix.
    DeletePrefix(String),
}

/// One change a watch saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A watch on a prefix from a revision on (see [`Etcd::watch`]).
pub struct Watch {
    stream: WatchStream,
}

/// What waiting on a [`Watch`] gave.
#[derive(Debug)]
pub enum Watched {
    /// Changes, and the revision they bring the prefix to.
    Changes(Vec<Change>, i64),
    /// Nothing within the wait.
    Quiet,
    /// The watch is over: its start was compacted away, etcd cancelled it,
    /// or the stream broke. List again (and watch from there).
    Lost(String),
}

/// Keys a list asks for at once (Cilium lists in pages too).
const PAGE: i64 = 1024;

/// A connection to one etcd endpoint.
pub struct Etcd {
    rt: Runtime,
    client: Client,
    endpoint: String,
}

impl Etcd {
    /// Connects to `endpoint` (see the module doc), giving up after
    /// `timeout`.
    pub fn connect(endpoint: &str, timeout: Duration) -> Result<Self, KvError> {
        let bad = |message: String| KvError::Endpoint {
            endpoint: endpoint.to_string(),
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the client's runtime: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = if let Some(path) = endpoint.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad("a unix:// endpoint names an absolute path".into()));
            }
            rt.block_on(unix_client(path, options))
                .map_err(|e| bad(e.to_string()))?
        } else if endpoint.starts_with("http://") {
            rt.block_on(Client::connect([endpoint], Some(options)))
                .map_err(|e| bad(e.to_string()))?
        } else {
            return Err(bad(
                "not one of http://HOST:PORT or unix:///PATH (https is not supported yet)".into(),
            ));
        };
        Ok(Self {
            rt,
            client,
            endpoint: endpoint.to_string(),
        })
    }

    /// Connects to the first of `endpoints` that answers; the error names
    /// every one that did not, and why.
    pub fn connect_any(endpoints: &[String], timeout: Duration) -> Result<Self, KvError> {
        let mut failures = Vec::new();
        for e in endpoints {
            match Self::connect(e, timeout) {
                Ok(etcd) => return Ok(etcd),
                Err(err) => failures.push(err.to_string()),
            }
        }
        Err(KvError::NoneAnswered(failures.join("; ")))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn failed(&self, what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> KvError + '_ {
        let what = what.into();
        move |source| KvError::Etcd {
            endpoint: self.endpoint.clone(),
            what,
            source,
        }
    }

    /// Every key under `prefix`, read in pages at one revision.
    pub fn list(&mut self, prefix: &str) -> Result<Listing, KvError> {
        let mut pairs = Vec::new();
        let revision = self.pages(prefix, |kv| {
            pairs.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            ));
        })?;
        Ok(Listing { pairs, revision })
    }

    /// Every key under `prefix` with the revision it was last written at,
    /// read in pages at one revision: what a caller that deletes a key
    /// only if nobody wrote it since ([`Etcd::delete_if_unchanged`]) needs.
    pub fn list_entries(&mut self, prefix: &str) -> Result<Vec<Entry>, KvError> {
        let mut entries = Vec::new();
        self.pages(prefix, |kv| {
            entries.push(Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            });
        })?;
        Ok(entries)
    }

    /// Hands `each` every key under `prefix`, page by page, all read at
    /// the revision of the first page; returns that revision.
    fn pages(&mut self, prefix: &str, mut each: impl FnMut(&KeyValue)) -> Result<i64, KvError> {
        let mut revision = 0;
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let r = self.rt.block_on(self.client.get(from.clone(), Some(opts)));
            let r = r.map_err(self.failed(format!("listing {prefix}")))?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            r.kvs().iter().for_each(&mut each);
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(revision),
            }
        }
    }

    /// Writes `key`, under `lease` if given.
    pub fn put(&mut self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), KvError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let r = self.rt.block_on(self.client.put(key, value, opts));
        r.map(|_| ()).map_err(self.failed(format!("writing {key}")))
    }

    /// Writes `key` only if it does not exist; whether it was written.
    pub fn create(&mut self, key: &str, value: &[u8], lease: Option<i64>) -> Result<bool, KvError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, opts)]);
        let r = self.rt.block_on(self.client.txn(txn));
        r.map(|t| t.succeeded())
            .map_err(self.failed(format!("creating {key}")))
    }

    /// Puts `key` only while `guard` holds `expected` (one transaction);
    /// whether it did.
    pub fn put_if(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
        guard: &str,
        expected: &[u8],
    ) -> Result<bool, KvError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::value(guard, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, opts)]);
        let r = self.rt.block_on(self.client.txn(txn));
        r.map(|t| t.succeeded())
            .map_err(self.failed(format!("putting {key} while {guard} holds its value")))
    }

    /// Applies `writes` in one transaction, all or none, the puts under
    /// `lease` if given. etcd takes at most 128 operations in one
    /// transaction unless started with a larger `--max-txn-ops`.
    pub fn write_all(&mut self, writes: &[Write], lease: Option<i64>) -> Result<(), KvError> {
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                Write::Put(k, v) => {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l));
                    TxnOp::put(k.as_str(), v.as_slice(), opts)
                }
                Write::Delete(k) => TxnOp::delete(k.as_str(), None),
                Write::DeletePrefix(p) => {
                    TxnOp::delete(p.as_str(), Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let r = self.rt.block_on(self.client.txn(Txn::new().and_then(ops)));
        r.map(|_| ())
            .map_err(self.failed(format!("writing {} keys in one transaction", writes.len())))
    }

    pub fn delete(&mut self, key: &str) -> Result<(), KvError> {
        let r = self.rt.block_on(self.client.delete(key, None));
        r.map(|_| ())
            .map_err(self.failed(format!("deleting {key}")))
    }

    /// Deletes `key` only if it was last written at `mod_revision` (so a
    /// key rewritten, or deleted and made again, since it was read stays);
    /// whether it was deleted. A key that is gone is not deleted.
    pub fn delete_if_unchanged(&mut self, key: &str, mod_revision: i64) -> Result<bool, KvError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        let r = self.rt.block_on(self.client.txn(txn));
        r.map(|t| t.succeeded()).map_err(self.failed(format!(
            "deleting {key} if still at revision {mod_revision}"
        )))
    }

    /// A new lease of `ttl` seconds.
    pub fn grant(&mut self, ttl: i64) -> Result<i64, KvError> {
        let r = self.rt.block_on(self.client.lease_grant(ttl, None));
        r.map(|g| g.id())
            .map_err(self.failed(format!("granting a lease of {ttl} s")))
    }

    /// Renews `lease` once.
    pub fn keep_alive(&mut self, lease: i64) -> Result<(), KvError> {
        let client = &mut self.client;
        let r = self.rt.block_on(async {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await
        });
        match r {
            Ok(Some(k)) if k.ttl() > 0 => Ok(()),
            Ok(_) => Err(KvError::Endpoint {
                endpoint: self.endpoint.clone(),
                message: format!("lease {lease:x} has expired"),
            }),
            Err(e) => Err(self.failed(format!("renewing lease {lease:x}"))(e)),
        }
    }

    pub fn revoke(&mut self, lease: i64) -> Result<(), KvError> {
        let r = self.rt.block_on(self.client.lease_revoke(lease));
        r.map(|_| ())
            .map_err(self.failed(format!("revoking lease {lease:x}")))
    }

    /// Takes etcd's lock `name` for the life of `lease` (etcd makes the key
    /// `name/<lease>`); returns the key to unlock with.
    pub fn lock(&mut self, name: &str, lease: i64) -> Result<Vec<u8>, KvError> {
        let opts = LockOptions::new().with_lease(lease);
        let r = self.rt.block_on(self.client.lock(name, Some(opts)));
        r.map(|l| l.key().to_vec())
            .map_err(self.failed(format!("locking {name}")))
    }

    pub fn unlock(&mut self, key: Vec<u8>) -> Result<(), KvError> {
        let what = format!("unlocking {}", String::from_utf8_lossy(&key));
        let r = self.rt.block_on(self.client.unlock(key));
        r.map(|_| ()).map_err(self.failed(what))
    }
}

impl Etcd {
    /// Watches every key under `prefix` from `revision` on.
    pub fn watch(&mut self, prefix: &str, revision: i64) -> Result<Watch, KvError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let r = self.rt.block_on(self.client.watch(prefix, Some(opts)));
        r.map(|stream| Watch { stream })
            .map_err(self.failed(format!("watching {prefix}")))
    }

    /// Waits up to `wait` for what `w` sees next.
    pub fn next(&mut self, w: &mut Watch, wait: Duration) -> Watched {
        let got = self
            .rt
            .block_on(async { tokio::time::timeout(wait, w.stream.message()).await });
        let resp = match got {
            Err(_) => return Watched::Quiet,
            Ok(Err(e)) => return Watched::Lost(e.to_string()),
            Ok(Ok(None)) => return Watched::Lost("the stream ended".into()),
            Ok(Ok(Some(r))) => r,
        };
        if resp.compact_revision() > 0 {
            return Watched::Lost(format!(
                "compacted up to revision {}",
                resp.compact_revision()
            ));
        }
        if resp.canceled() {
            return Watched::Lost(format!("cancelled: {}", resp.cancel_reason()));
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        let changes = resp
            .events()
            .iter()
            .filter_map(|ev| {
                let kv = ev.kv()?;
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                Some(match ev.event_type() {
                    EventType::Put => Change::Put(key, kv.value().to_vec()),
                    EventType::Delete => Change::Delete(key),
                })
            })
            .collect::<Vec<_>>();
        if changes.is_empty() {
            return Watched::Quiet;
        }
        Watched::Changes(changes, revision)
    }

    /// Compacts the store's history up to `revision` (what `etcdctl
    /// compact` does), for tests and maintenance.
    pub fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        let r = self.rt.block_on(self.client.compact(revision, None));
        r.map(|_| ())
            .map_err(self.failed(format!("compacting to revision {revision}")))
    }
}

/// A client over the Unix socket at `path`.
async fn unix_client(
    path: PathBuf,
    options: ConnectOptions,
) -> Result<Client, Box<dyn std::error::Error>> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The authority is only what HTTP/2 sends; the connector picks the
    // socket.
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?;
    Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)).await?)
}

/// The first key after every key that starts with `prefix` (etcd's range
/// end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
    }

    #[test]
    fn bad_endpoints_are_refused_by_name() {
        for (e, says) in [
            ("localhost:2379", "not one of"),
            ("unix://relative/sock", "absolute path"),
        ] {
            let err = Etcd::connect(e, Duration::from_secs(1))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(e) && err.contains(says), "{err}");
        }
    }
}
