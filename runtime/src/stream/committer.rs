//! Batching commits: deliveries hand their [`Commit`] to a consumer's
//! `Committer`, whose task sends whatever has gathered as one script (in a
//! Redis Cluster, one script per slot, sent together). While one batch is in
//! flight the next gathers, so under load each call to Redis finishes many
//! deliveries, and a lone delivery is sent at once.

use super::commit::{Commit, Committed, commit_batch};
use super::conn::Conn;
use super::error::Error;
use super::slot;
use std::collections::BTreeMap;
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
    reply: Reply,
}

/// Where a job's result goes.
enum Reply {
    /// To a caller waiting for it.
    Wait(oneshot::Sender<Result<Committed, Error>>),
    /// To a function the committer's task runs, so that no task has to
    /// wake up for the result ([`Committer::commit_then`]).
    Then(Then),
}

/// The function of a [`Reply::Then`]: called once, with an error if the job
/// is dropped unanswered (as a waiting caller gets one when its channel
/// closes), so the delivery that handed its commit over is always finished.
struct Then(Option<Finish>);

/// What a [`Then`] calls.
type Finish = Box<dyn FnOnce(Result<Committed, Error>) + Send + Sync>;

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(then) = self.0.take() {
            then(Err(Error::new("commit", super::ErrorKind::Stopped)));
        }
    }
}

impl Reply {
    fn send(self, result: Result<Committed, Error>) {
        match self {
            Reply::Wait(tx) => drop(tx.send(result)),
            Reply::Then(mut then) => (then.0.take().expect("called once"))(result),
        }
    }
}

impl Committer {
    /// Starts the task that commits, through `group` as `consumer`, on `conn`.
    pub fn start(conn: Conn, group: String, consumer: String) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, Who { group, consumer }, rx));
        Committer { tx }
    }

    /// Commits `commit` in the next batch; see [`commit_batch`] for the result.
    pub async fn commit(&self, commit: Arc<Commit>) -> Result<Committed, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { commit: commit.clone(), reply: Reply::Wait(reply) }).map_err(|_| stopped(&commit))?;
        answer.await.unwrap_or_else(|_| Err(stopped(&commit)))
    }

    /// Commits `commit` in the next batch and calls `then` with the result
    /// (as [`Committer::commit`] gives it) on the committer's task, which it
    /// must not hold up: no waiting, no I/O. At once, with an error, if the
    /// committer has stopped.
    pub fn commit_then(
        &self,
        commit: Arc<Commit>,
        then: impl FnOnce(Result<Committed, Error>) + Send + Sync + 'static,
    ) {
        let job = Job { commit, reply: Reply::Then(Then(Some(Box::new(then)))) };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            job.reply.send(Err(stopped(&job.commit)));
        }
    }
}

/// The error of `commit` when the committer has stopped.
fn stopped(commit: &Commit) -> Error {
    let (stream, id) = commit.entry();
    Error::new(format!("commit of {stream} {id}"), super::ErrorKind::Stopped)
}

/// Whose commits these are: a group, and this host's consumer in it.
struct Who {
    group: String,
    consumer: String,
}

async fn run(conn: Conn, who: Who, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        match &conn {
            Conn::Cluster(_) => commit_by_slot(&conn, &who, &mut jobs).await,
            _ => commit_together(conn.clone(), &who, &mut jobs).await,
        }
    }
}

/// Commits every job in one script and answers each.
async fn commit_together(mut conn: Conn, who: &Who, jobs: &mut Vec<Job>) {
    match commit_batch(&mut conn, &who.group, &who.consumer, jobs.iter().map(|j| &*j.commit)).await {
        Ok(results) => {
            for (job, result) in jobs.drain(..).zip(results) {
                job.reply.send(Ok(result));
            }
        }
        Err(e) => {
            for job in jobs.drain(..) {
                job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Commits the jobs in one script per slot of their streams (a cluster
/// script touches one slot), all at once.
async fn commit_by_slot(conn: &Conn, who: &Who, jobs: &mut Vec<Job>) {
    let mut by_slot: BTreeMap<u16, Vec<Job>> = BTreeMap::new();
    for job in jobs.drain(..) {
        by_slot.entry(slot::of(job.commit.entry().0)).or_default().push(job);
    }
    let batches = by_slot.into_values().map(|mut batch| {
        let conn = conn.clone();
        async move { commit_together(conn, who, &mut batch).await }
    });
    futures::future::join_all(batches).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting() -> (Reply, std::sync::mpsc::Receiver<Result<Committed, Error>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = Reply::Then(Then(Some(Box::new(move |result| tx.send(result).unwrap()))));
        (reply, rx)
    }

    #[test]
    fn a_function_reply_is_called_once_with_the_result() {
        let (reply, rx) = counting();
        reply.send(Ok(Committed::Done));
        assert_eq!(rx.try_iter().map(|r| r.unwrap()).collect::<Vec<_>>(), [Committed::Done]);
    }

    #[test]
    fn a_function_reply_dropped_unanswered_is_called_with_an_error() {
        // As when the committer's task dies with a batch in hand: the
        // delivery that handed its commit over must still be finished.
        let (reply, rx) = counting();
        drop(reply);
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
    }
}
