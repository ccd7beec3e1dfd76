//! One writing run of a kind at a time per lake: the lease a run holds while it may roll back and
//! commit.
//!
//! A run that starts rolls back the unfinished run before it, so a second run on the same lake
//! would roll back the live work of the first. On a local lake the lease is an OS file lock, which
//! the kernel gives up when its holder dies. On Azure (`abfss://`, `az://`) it is a small blob,
//! taken and renewed with conditional puts (`If-None-Match: *` / `If-Match: <etag>`), so the
//! storage service decides which of two racing runs wins:
//! - the holder renews it every quarter of its time to live;
//! - a lease not renewed for its time to live (by the service's `Last-Modified`) is free to take,
//!   so a holder killed with SIGKILL gives the lake up after that time;
//! - a holder that could not renew for three quarters of its time to live counts itself as having
//!   lost the lake and stops before its next commit ([`Lease::ensure_held`]), before anyone else
//!   may take it over.
//!
//! Both kinds record who holds the lease and since when, for the message the second run prints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::Lake;

/// How long a remote lease lives without renewal when `[lake] lease_seconds` does not say.
pub const DEFAULT_LEASE_TTL: Duration =
    Duration::from_secs(crate::config::DEFAULT_LEASE_SECONDS as u64);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the lake {} is in use: {} holds {} since {}; this run starts when it ends (or, if it died, {} s after its last renewal at {})",
        .0.lake, .0.holder, .0.name, .0.since, .0.ttl_secs, .0.renewed
    )]
    Held(Box<HeldBy>),
    #[error(
        "the lake {lake} is in use: {holder} holds its lock {path} since {since}; this run can start when that one ends"
    )]
    HeldLocally {
        lake: String,
        path: String,
        /// The holder's description, or "another `vitalake` run" when it has not written one.
        holder: String,
        since: String,
    },
    #[error(
        "lost the lease {name} on {lake}: {why}; this run stopped before its next commit and the next run rolls it back"
    )]
    Lost {
        lake: String,
        name: String,
        /// Taken over, or not renewed for so long that another run may have taken it.
        why: String,
    },
    #[error("lease {name} on {lake}: {source}")]
    Storage {
        lake: String,
        name: String,
        source: crate::BoxError,
    },
    #[error("lease {name} on {lake} is not a vitalake lease: {source}")]
    Corrupt {
        lake: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("lease {name} on {lake}: another run took it while this one was taking it")]
    Contended { lake: String, name: String },
}

/// A remote lease someone else holds, for the message.
#[derive(Debug)]
pub struct HeldBy {
    pub lake: String,
    pub name: String,
    pub holder: Holder,
    pub since: DateTime<Utc>,
    pub renewed: DateTime<Utc>,
    pub ttl_secs: u64,
}

/// Who holds a lease: enough for an operator to find the run (no data, no secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub command: String,
}

impl Holder {
    fn this_process(command: &str) -> Holder {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "an unknown host".into());
        Holder {
            host,
            pid: std::process::id(),
            command: command.to_string(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`vitalake {}` (pid {} on {})",
            self.command, self.pid, self.host
        )
    }
}

/// The body of a lease: the local lock file's content, or the remote blob.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    holder: Holder,
    since: DateTime<Utc>,
    ttl_secs: u64,
    /// Set when the holder gave the lease back; the blob stays, so the next taker still needs the
    /// etag it was given back with.
    #[serde(default)]
    released: bool,
}

/// A held lease. [`Lease::release`] gives it back; one only dropped stops being renewed, so a
/// remote lease then expires after its time to live.
pub struct Lease {
    kind: Kind,
    lake: String,
    name: String,
}

enum Kind {
    Local(#[allow(dead_code, reason = "held for its OS lock")] std::fs::File),
    Remote(Remote),
}

impl Lease {
    /// Takes the lease `name` (a file name at the lake root, e.g. `.vitalake-ingest.lock`) for the
    /// run `command`, or says who holds it.
    pub async fn acquire(lake: &Lake, name: &str, command: &str) -> Result<Lease, LeaseError> {
        let holder = Holder::this_process(command);
        let record = Record {
            holder,
            since: Utc::now(),
            ttl_secs: lake.lease_ttl().as_secs().max(1),
            released: false,
        };
        let kind = match lake.local_path() {
            Some(root) => Kind::Local(lock_file(lake, &root.join(name), &record)?),
            None => Kind::Remote(Remote::acquire(lake, name, record).await?),
        };
        Ok(Lease {
            kind,
            lake: lake.root().to_string(),
            name: name.to_string(),
        })
    }

    /// Fails once this run can no longer be sure it is the lake's only writer: call it before
    /// each commit and before marking the run finished.
    pub fn ensure_held(&self) -> Result<(), LeaseError> {
        match &self.kind {
            Kind::Local(_) => Ok(()),
            Kind::Remote(remote) => remote.ensure_held(&self.lake, &self.name),
        }
    }

    /// Gives the lease back now, so the next run need not wait for it to expire.
    pub async fn release(self) {
        if let Kind::Remote(remote) = &self.kind {
            remote.release().await;
        }
    }
}

fn lock_file(
    lake: &Lake,
    path: &std::path::Path,
    record: &Record,
) -> Result<std::fs::File, LeaseError> {
    use std::io::{Read, Seek, Write};
    let storage = |e: std::io::Error| LeaseError::Storage {
        lake: lake.root().to_string(),
        name: path.display().to_string(),
        source: e.into(),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(storage)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(storage)?;
            file.rewind().map_err(storage)?;
            file.write_all(&serde_json::to_vec(record).expect("a lease record serializes"))
                .map_err(storage)?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            // The holder writes its record right after locking: an empty file is one caught in
            // between, or a holder from before records were written.
            let held: Option<Record> = serde_json::from_str(&text).ok();
            Err(LeaseError::HeldLocally {
                lake: lake.root().to_string(),
                path: path.display().to_string(),
                holder: held.as_ref().map_or_else(
                    || "another `vitalake` run".to_string(),
                    |r| r.holder.to_string(),
                ),
                since: held.map_or_else(|| "a moment ago".to_string(), |r| r.since.to_string()),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(storage(e)),
    }
}

/// A lease blob and the task that renews it.
struct Remote {
    store: Arc<dyn ObjectStore>,
    path: Path,
    state: Arc<Mutex<RemoteState>>,
    renewer: tokio::task::JoinHandle<()>,
    ttl: Duration,
}

struct RemoteState {
    etag: String,
    record: Record,
    /// When the last successful put was sent (local monotonic clock).
    renewed: Instant,
    /// Someone else's put won: the lease is gone for good.
    taken: bool,
}

impl RemoteState {
    /// The record as it stands, put only over the version this holder last wrote.
    fn next_put(&self) -> (PutPayload, PutOptions) {
        let body = serde_json::to_vec(&self.record).expect("a lease record serializes");
        let options = PutOptions {
            mode: if_match(self.etag.clone()),
            ..PutOptions::default()
        };
        (body.into(), options)
    }
}

impl Remote {
    async fn acquire(lake: &Lake, name: &str, record: Record) -> Result<Remote, LeaseError> {
        let storage = |e: crate::BoxError| LeaseError::Storage {
            lake: lake.root().to_string(),
            name: name.to_string(),
            source: e,
        };
        let store = lake.object_store().map_err(|e| storage(e.into()))?;
        let path = Path::from(name);
        let ttl = Duration::from_secs(record.ttl_secs);
        let body = || PutPayload::from(serde_json::to_vec(&record).expect("serializes"));
        // Two tries: a race lost between reading and writing is read again once.
        for _ in 0..2 {
            let sent = Instant::now();
            let mode = match store.get(&path).await {
                Err(object_store::Error::NotFound { .. }) => PutMode::Create,
                Err(e) => return Err(storage(e.into())),
                Ok(got) => {
                    let etag = got.meta.e_tag.clone().unwrap_or_default();
                    let renewed = got.meta.last_modified;
                    let bytes = got.bytes().await.map_err(|e| storage(e.into()))?;
                    let held: Record =
                        serde_json::from_slice(&bytes).map_err(|source| LeaseError::Corrupt {
                            lake: lake.root().to_string(),
                            name: name.to_string(),
                            source,
                        })?;
                    let expires = renewed + chrono::Duration::seconds(held.ttl_secs as i64);
                    if !held.released && expires > Utc::now() {
                        return Err(LeaseError::Held(Box::new(HeldBy {
                            lake: lake.root().to_string(),
                            name: name.to_string(),
                            holder: held.holder,
                            since: held.since,
                            renewed,
                            ttl_secs: held.ttl_secs,
                        })));
                    }
                    if !held.released {
                        tracing::warn!(
                            lease = name,
                            pid = held.holder.pid,
                            host = held.holder.host,
                            "taking over a lease its holder stopped renewing"
                        );
                    }
                    if_match(etag)
                }
            };
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match store.put_opts(&path, body(), options).await {
                Ok(result) => {
                    let state = Arc::new(Mutex::new(RemoteState {
                        etag: result.e_tag.unwrap_or_default(),
                        record,
                        renewed: sent,
                        taken: false,
                    }));
                    let renewer =
                        tokio::spawn(renew(store.clone(), path.clone(), state.clone(), ttl / 4));
                    return Ok(Remote {
                        store,
                        path,
                        state,
                        renewer,
                        ttl,
                    });
                }
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(storage(e.into())),
            }
        }
        Err(LeaseError::Contended {
            lake: lake.root().to_string(),
            name: name.to_string(),
        })
    }

    fn ensure_held(&self, lake: &str, name: &str) -> Result<(), LeaseError> {
        let state = self.state.lock().expect("lease state");
        let why = if state.taken {
            "another run took it over".to_string()
        } else if state.renewed.elapsed() > self.ttl * 3 / 4 {
            format!(
                "it could not be renewed for {} s, so another run may hold the lake now",
                state.renewed.elapsed().as_secs()
            )
        } else {
            return Ok(());
        };
        Err(LeaseError::Lost {
            lake: lake.to_string(),
            name: name.to_string(),
            why,
        })
    }

    async fn release(&self) {
        self.renewer.abort();
        let (body, options) = {
            let mut state = self.state.lock().expect("lease state");
            if state.taken {
                return;
            }
            state.record.released = true;
            state.next_put()
        };
        if let Err(e) = self.store.put_opts(&self.path, body, options).await {
            // Not fatal: the lease expires by itself.
            tracing::warn!(error = %e, "could not give the lake's lease back; it expires by itself");
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A put that succeeds only over the version `etag` names.
fn if_match(etag: String) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: Some(etag),
        version: None,
    })
}

/// Renews the lease every `every` until it is taken or the task is aborted. A failed renewal is
/// tried again at the next tick; [`Remote::ensure_held`] decides when too many have failed.
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: Path,
    state: Arc<Mutex<RemoteState>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (body, options) = state.lock().expect("lease state").next_put();
        let sent = Instant::now();
        match store.put_opts(&path, body, options).await {
            Ok(result) => {
                let mut state = state.lock().expect("lease state");
                state.etag = result.e_tag.unwrap_or_default();
                state.renewed = sent;
            }
            Err(object_store::Error::Precondition { .. }) => {
                tracing::error!("the lake's lease was taken by another run; stopping");
                state.lock().expect("lease state").taken = true;
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the lake's lease failed; retrying"),
        }
    }
}
