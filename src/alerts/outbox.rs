//! The alert outbox: a JSON-lines file on this instance's disk, written (and synced) before the
//! store's once-only marker is claimed. An alert whose marker this instance may have won but whose
//! delivery it never finished (the process died, or the store's answer was lost) is still there at
//! the next start and is sent again, with the same event id: a receiver that deduplicates on it
//! sees the alert once. An alert another instance won is marked `lost` and never replayed.
//!
//! Records: `{"state":"pending","event":{...}}`, then `{"state":"lost"|"done","id":"evt_..."}`.
//! The file is compacted at startup to the alerts still owed.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::event::AlertEvent;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum Record {
    Pending { event: Box<AlertEvent> },
    Lost { id: String },
    Done { id: String },
}

pub struct Outbox {
    path: PathBuf,
    file: Mutex<File>,
}

impl Outbox {
    /// Opens (creating) the outbox and returns the alerts an earlier process left owed, in the
    /// order it claimed them. The file is rewritten to hold only those.
    pub fn open(path: &Path) -> anyhow::Result<(Arc<Self>, Vec<AlertEvent>)> {
        let owed = match File::open(path) {
            Ok(file) => owed(BufReader::new(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let compacted = path.with_extension("jsonl.tmp");
        {
            let mut out = File::create(&compacted)
                .with_context(|| format!("writing {}", compacted.display()))?;
            for event in &owed {
                writeln!(
                    out,
                    "{}",
                    line(&Record::Pending {
                        event: Box::new(event.clone())
                    })
                )?;
            }
            out.sync_all()?;
        }
        std::fs::rename(&compacted, path)
            .with_context(|| format!("replacing {}", path.display()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((
            Arc::new(Self {
                path: path.to_owned(),
                file: Mutex::new(file),
            }),
            owed,
        ))
    }

    /// Before the marker is claimed: durable once this returns `Ok`.
    pub async fn pending(self: &Arc<Self>, event: &AlertEvent) -> std::io::Result<()> {
        self.append(Record::Pending {
            event: Box::new(event.clone()),
        })
        .await
    }

    /// Another instance won the marker: nothing owed.
    pub async fn lost(self: &Arc<Self>, id: &str) -> std::io::Result<()> {
        self.append(Record::Lost { id: id.to_owned() }).await
    }

    /// Delivered, or written to the dead-letter log: nothing owed.
    pub async fn done(self: &Arc<Self>, id: &str) -> std::io::Result<()> {
        self.append(Record::Done { id: id.to_owned() }).await
    }

    async fn append(self: &Arc<Self>, record: Record) -> std::io::Result<()> {
        let this = self.clone();
        let text = line(&record);
        tokio::task::spawn_blocking(move || {
            let mut file = this.file.lock().unwrap_or_else(|e| e.into_inner());
            writeln!(file, "{text}")?;
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn line(record: &Record) -> String {
    serde_json::to_string(record).expect("an outbox record serializes")
}

/// Pending alerts with no `lost` or `done` after them. An unreadable line (a write cut short by a
/// crash) is skipped: only the last line can be one, and it is then not a settled record.
pub(super) fn owed(reader: impl BufRead) -> Vec<AlertEvent> {
    let mut pending = BTreeMap::new();
    let mut order = Vec::new();
    let mut settled = HashSet::new();
    for line in reader.lines().map_while(Result::ok) {
        match serde_json::from_str::<Record>(&line) {
            Ok(Record::Pending { event }) => {
                if !pending.contains_key(&event.id) {
                    order.push(event.id.clone());
                }
                pending.insert(event.id.clone(), *event);
            }
            Ok(Record::Lost { id } | Record::Done { id }) => {
                settled.insert(id);
            }
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable alert outbox line"),
        }
    }
    order
        .into_iter()
        .filter(|id| !settled.contains(id))
        .filter_map(|id| pending.remove(&id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::event::team_crossing;

    fn event(threshold: u8) -> AlertEvent {
        let at = 1_796_007_600;
        AlertEvent::budget_threshold(&team_crossing("t", threshold, 1, 2, at), at)
    }

    #[tokio::test]
    async fn what_was_claimed_and_not_settled_is_owed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let (outbox, owed) = Outbox::open(&path).unwrap();
        assert!(owed.is_empty());
        let (won, lost, delivered) = (event(50), event(80), event(100));
        for e in [&won, &lost, &delivered] {
            outbox.pending(e).await.unwrap();
        }
        outbox.lost(&lost.id).await.unwrap();
        outbox.done(&delivered.id).await.unwrap();
        drop(outbox);
        // A crash mid-write leaves a cut line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"state\":\"done\",\"id\":\"ev")
            .unwrap();

        let (outbox, owed) = Outbox::open(&path).unwrap();
        assert_eq!(owed, vec![won.clone()]);
        // Compacted: only what is owed is left.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        outbox.done(&won.id).await.unwrap();
        drop(outbox);
        assert!(Outbox::open(&path).unwrap().1.is_empty());
    }
}
