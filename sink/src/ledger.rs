//! Partition ownership in a lake shared by several members of one consumer group (DESIGN.md, "Several
//! members over one lake").
//!
//! ```text
//! <lake>/_aifinops/ledger.json     topic -> partition -> {writer, epoch, from}: who may commit it
//! <lake>/_aifinops/ledger.lock     flock held while claiming partitions and around each commit point
//! <lake>/_aifinops/writers/<name>/ each writer's own commit chain (manifest/, staging/, state/, dedup/)
//! ```
//! A member that is assigned a partition *claims* it: under the lock it bumps the partition's epoch, names
//! itself the owner and starts at the previous owner's committed offset. Every commit point (a writer's
//! manifest rename) happens under the same lock after checking that the writer still owns, at the epoch
//! it claimed, every partition the commit consumed; a member that lost a partition (a zombie past its
//! session timeout) is fenced: its commit fails, nothing of it becomes visible, and it rolls back. Under
//! the lock the commit also reads the dedup segments other writers committed since it last looked: an
//! event id that another writer already counted makes the commit fail (and the writer roll back and
//! re-read with those ids known), so a duplicate consumed by two members is counted once; and the alert
//! rules continue from the rule state of the lake's latest commit by any writer (`lake_seq`), so budgets see
//! every member's spend. Writers that are gone are adopted by a running member (`Lake::orphans`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::lake::{META, Manifest, latest_manifest, open_lock_file, write_atomic};
use crate::{SinkError, io_err};

/// A topic partition.
pub type Tp = (String, i32);

/// The owner of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub writer: String,
    /// Bumped by every claim; a commit must carry the epoch its writer claimed.
    pub epoch: u64,
    /// The offset the owner started from when it claimed the partition (the previous owner's position).
    #[serde(default)]
    pub from: Option<i64>,
}

/// `_aifinops/ledger.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerFile {
    pub partitions: BTreeMap<String, BTreeMap<i32, Owner>>,
}

/// Writer -> the dedup segments of its read.
pub(crate) type SegmentsRead = HashMap<String, BTreeSet<u64>>;

#[derive(Default)]
struct Inner {
    /// Epochs this writer claimed.
    epochs: HashMap<Tp, u64>,
    /// Other writers' dedup segments already merged into this writer's set.
    seen: SegmentsRead,
}

/// This writer's view of the shared ledger.
pub struct Ledger {
    root: PathBuf,
    writer: String,
    inner: Mutex<Inner>,
    /// The locked `ledger.lock` and how many guards of this process hold it (re-entrant: an operation under
    /// the lock may call another that takes it).
    held: Mutex<Option<(fs::File, usize)>>,
}

/// The ledger lock, released when the last guard of this process is dropped.
pub struct Guard<'a>(&'a Ledger);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let mut held = self.0.held.lock().expect("lock");
        if let Some((_, depth)) = held.as_mut() {
            *depth -= 1;
            if *depth == 0 {
                *held = None; // closing the file releases the flock
            }
        }
    }
}

/// The directory of a writer's commit chain.
pub(crate) fn writer_meta(root: &Path, writer: &str) -> PathBuf {
    root.join(META).join("writers").join(writer)
}

/// Writer names become directory and file names: letters, digits, `-`, `_`, `.`; at most 64.
pub fn valid_writer_name(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 64
        && !w.starts_with('.')
        && w.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Ledger {
    pub(crate) fn new(root: &Path, writer: &str) -> Self {
        Ledger { root: root.to_path_buf(), writer: writer.to_string(), inner: Mutex::default(), held: Mutex::default() }
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Takes the lock that orders the commits and claims of all writers of the lake.
    pub fn lock(&self) -> Result<Guard<'_>, SinkError> {
        use std::os::fd::AsRawFd;
        let mut held = self.held.lock().expect("lock");
        if let Some((_, depth)) = held.as_mut() {
            *depth += 1;
            return Ok(Guard(self));
        }
        let path = self.root.join(META).join("ledger.lock");
        let f = open_lock_file(&path)?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel call.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                *held = Some((f, 1));
                return Ok(Guard(self));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(SinkError::Io { context: format!("locking {}", path.display()), source: e });
            }
        }
    }

    pub(crate) fn read(&self) -> Result<LedgerFile, SinkError> {
        let path = self.root.join(META).join("ledger.json");
        match fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| SinkError::Manifest { path: path.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LedgerFile::default()),
            Err(e) => Err(SinkError::Io { context: format!("reading {}", path.display()), source: e }),
        }
    }

    fn write(&self, f: &LedgerFile) -> Result<(), SinkError> {
        write_atomic(
            &self.root.join(META).join("ledger.json"),
            serde_json::to_string_pretty(f).expect("json").as_bytes(),
        )
    }

    /// Writers of this lake other than this one.
    pub(crate) fn others(&self) -> Result<Vec<String>, SinkError> {
        let dir = self.root.join(META).join("writers");
        let mut out: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|w| *w != self.writer && valid_writer_name(w))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Claims newly assigned partitions: bumps their epochs, names this writer their owner, and returns
    /// where each starts (the previous owner's committed offset; absent for a partition never committed).
    pub fn claim(&self, tps: &[Tp]) -> Result<HashMap<Tp, i64>, SinkError> {
        let _g = self.lock()?;
        let mut file = self.read()?;
        let mut manifests = HashMap::new();
        let mut starts = HashMap::new();
        let mut inner = self.inner.lock().expect("lock");
        for (topic, p) in tps {
            let entry = file.partitions.entry(topic.clone()).or_default().entry(*p);
            let prev = match &entry {
                std::collections::btree_map::Entry::Occupied(o) => Some(o.get().clone()),
                std::collections::btree_map::Entry::Vacant(_) => None,
            };
            // the owner's manifest may carry an older position of a partition it owned before: offsets only
            // grow, so the start is the larger of that and where its current ownership began
            let committed = match &prev {
                Some(o) => {
                    if !manifests.contains_key(&o.writer) {
                        let m = latest_manifest(&writer_meta(&self.root, &o.writer))?;
                        manifests.insert(o.writer.clone(), m);
                    }
                    let own = manifests[&o.writer].as_ref().and_then(|m| m.offsets.get(topic)?.get(p).copied());
                    own.max(o.from)
                }
                None => None,
            };
            let epoch = prev.as_ref().map_or(1, |o| o.epoch + 1);
            tracing::info!(
                topic = %topic, partition = p, writer = %self.writer, epoch,
                previous_owner = prev.as_ref().map(|o| o.writer.as_str()).unwrap_or("-"),
                start = ?committed,
                "partition claimed in the lake's ledger"
            );
            entry.insert_entry(Owner { writer: self.writer.clone(), epoch, from: committed });
            inner.epochs.insert((topic.clone(), *p), epoch);
            if let Some(o) = committed {
                starts.insert((topic.clone(), *p), o);
            }
        }
        self.write(&file)?;
        Ok(starts)
    }

    /// Fails when a partition this commit consumed is now owned by another writer or a later claim.
    pub(crate) fn check_owner(&self, file: &LedgerFile, consumed: &[Tp]) -> Result<(), SinkError> {
        let inner = self.inner.lock().expect("lock");
        for (topic, p) in consumed {
            let mine = inner.epochs.get(&(topic.clone(), *p));
            let owner = file.partitions.get(topic).and_then(|ps| ps.get(p));
            match (owner, mine) {
                (Some(o), Some(e)) if o.writer == self.writer && o.epoch == *e => {}
                _ => {
                    return Err(SinkError::Fenced {
                        topic: topic.clone(),
                        partition: *p,
                        owner: owner.map_or_else(|| "nobody".to_string(), |o| format!("{}@{}", o.writer, o.epoch)),
                        writer: format!("{}@{}", self.writer, mine.map_or(0, |e| *e)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Other writers' live dedup segments (only those not merged yet when `only_new`), concatenated, and
    /// the segment seqs read, to pass to [`Ledger::mark_seen`] once they are merged.
    pub(crate) fn foreign_segments(
        &self,
        latests: &[(String, Manifest)],
        only_new: bool,
    ) -> Result<(Vec<u8>, SegmentsRead), SinkError> {
        let mut bytes = Vec::new();
        let mut read = HashMap::new();
        let inner = self.inner.lock().expect("lock");
        for (w, m) in latests.iter().filter(|(w, _)| *w != self.writer) {
            let meta = writer_meta(&self.root, w);
            let seen = inner.seen.get(w);
            let mut got = BTreeSet::new();
            for seq in m.dedup_segments.keys() {
                if only_new && seen.is_some_and(|s| s.contains(seq)) {
                    got.insert(*seq);
                    continue;
                }
                let p = meta.join("dedup").join(format!("{seq:010}.bin"));
                match fs::read(&p) {
                    Ok(b) => bytes.extend(b),
                    // its writer dropped it after a later commit left the horizon behind it
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SinkError::Io { context: format!("reading {}", p.display()), source: e }),
                }
                got.insert(*seq);
            }
            read.insert(w.clone(), got);
        }
        Ok((bytes, read))
    }

    /// The last commit of every writer of the lake (this one included), read once per operation under the lock.
    pub(crate) fn latests(&self) -> Result<Vec<(String, Manifest)>, SinkError> {
        let mut out = Vec::new();
        for w in self.others()?.into_iter().chain([self.writer.clone()]) {
            if let Some(m) = latest_manifest(&writer_meta(&self.root, &w))? {
                out.push((w, m));
            }
        }
        Ok(out)
    }

    /// The lake-wide commit sequence: the largest `lake_seq` of all writers' last commits.
    pub(crate) fn lake_seq(latests: &[(String, Manifest)]) -> u64 {
        latests.iter().map(|(_, m)| m.lake_seq).max().unwrap_or(0)
    }

    /// The rule state (`rules.json`) of the lake's latest commit, by any writer: alert rules over the whole
    /// lake's spend (budgets) continue from it; `Null` before the first commit.
    pub(crate) fn latest_rules(&self, latests: &[(String, Manifest)]) -> Result<serde_json::Value, SinkError> {
        let Some((_, m)) = latests.iter().max_by_key(|(_, m)| m.lake_seq) else {
            return Ok(serde_json::Value::Null);
        };
        let p = self.root.join(&m.state_dir).join("rules.json");
        match fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Value::Null),
            Err(e) => Err(SinkError::Io { context: format!("reading {}", p.display()), source: e }),
        }
    }

    /// The writer whose chain records the adoption of `writer`'s commit `seq` or later, if any.
    pub(crate) fn adopted_by(&self, writer: &str, seq: u64) -> Result<Option<String>, SinkError> {
        Ok(self
            .latests()?
            .into_iter()
            .find(|(w, m)| w != writer && m.adopted.get(writer).is_some_and(|s| *s >= seq))
            .map(|(w, _)| w))
    }

    pub(crate) fn mark_seen(&self, read: SegmentsRead) {
        self.inner.lock().expect("lock").seen = read;
    }
}

/// Event ids (their 16-byte keys) of a dedup segment: 24-byte entries, key first (`aggregate::dedup`).
pub(crate) fn segment_keys(bytes: &[u8]) -> impl Iterator<Item = [u8; 16]> + '_ {
    bytes.chunks_exact(24).map(|c| c[..16].try_into().expect("16 bytes"))
}
