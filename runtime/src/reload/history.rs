//! The host's recent reloads, kept in memory for the dashboard
//! (`/api/reloads`): when, the result, each handler's plugin version after
//! it, and why a rejected one was rejected.

use super::ReloadReport;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// How many reloads are kept.
const KEPT: usize = 50;

/// One reload (or the start), as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// When, Unix ms.
    pub at: u64,
    /// `started`, `applied` or `rejected`.
    pub result: &'static str,
    /// Handler name → plugin version, after it (empty for a rejected one:
    /// the versions before it keep serving).
    pub versions: BTreeMap<String, String>,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last 50 reloads of this host, newest last.
#[derive(Debug, Default)]
pub struct ReloadLog {
    records: Mutex<VecDeque<ReloadRecord>>,
}

impl ReloadLog {
    /// Records `report`, made at `at` (Unix ms).
    pub fn record(&self, report: &ReloadReport, at: u64) {
        let (result, versions, error) = match report {
            ReloadReport::Started { versions } => ("started", versions.clone(), None),
            ReloadReport::Applied { versions } => ("applied", versions.clone(), None),
            ReloadReport::Rejected { error } => ("rejected", BTreeMap::new(), Some(error.clone())),
        };
        let mut records = self.records.lock().expect("never poisoned");
        if records.len() == KEPT {
            records.pop_front();
        }
        records.push_back(ReloadRecord { at, result, versions, error });
    }

    /// The records, newest first.
    pub fn recent(&self) -> Vec<ReloadRecord> {
        self.records.lock().expect("never poisoned").iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_reloads_newest_first() {
        let log = ReloadLog::default();
        let versions = |v: &str| BTreeMap::from([("h".to_owned(), v.to_owned())]);
        log.record(&ReloadReport::Started { versions: versions("a") }, 1);
        log.record(&ReloadReport::Applied { versions: versions("b") }, 2);
        log.record(&ReloadReport::Rejected { error: "bad".into() }, 3);
        let recent = log.recent();
        assert_eq!(recent.iter().map(|r| r.result).collect::<Vec<_>>(), ["rejected", "applied", "started"]);
        assert_eq!(recent[0].error.as_deref(), Some("bad"));
        assert_eq!((recent[0].versions.len(), &recent[1].versions), (0, &versions("b")));
        for i in 0..KEPT as u64 {
            log.record(&ReloadReport::Rejected { error: "again".into() }, 10 + i);
        }
        assert_eq!(log.recent().len(), KEPT);
        assert!(log.recent().iter().all(|r| r.result == "rejected"), "the oldest went first");
    }
}
