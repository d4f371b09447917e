//! Batching commits: deliveries hand their [`Commit`] to a consumer's
//! `Committer`, whose task sends whatever has gathered as one script. While
//! one batch is in flight the next gathers, so under load each call to Redis
//! finishes many deliveries, and a lone delivery is sent at once.

use super::commit::{Commit, Committed, commit_batch};
use super::error::Error;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most commits sent in one script.
const MAX_BATCH: usize = 256;

/// The handle deliveries commit through. Its task ends when the last
/// handle is dropped, after answering every commit it took.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Job>,
}

struct Job {
    commit: Arc<Commit>,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

impl Committer {
    /// Starts the task that commits, through `group`, on `conn`.
    pub fn start(conn: ConnectionManager, group: String) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, group, rx));
        Committer { tx }
    }

    /// Commits `commit` in the next batch; see [`commit_batch`] for the result.
    pub async fn commit(&self, commit: Arc<Commit>) -> Result<Committed, Error> {
        let (stream, id) = commit.entry();
        let stopped = || Error::new(format!("commit of {stream} {id}"), super::ErrorKind::Stopped);
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { commit: commit.clone(), reply }).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(mut conn: ConnectionManager, group: String, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        match commit_batch(&mut conn, &group, jobs.iter().map(|j| &*j.commit)).await {
            Ok(results) => {
                for (job, result) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) => {
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
