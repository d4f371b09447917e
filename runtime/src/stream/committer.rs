//! Batching commits: deliveries hand their [`Commit`] to a consumer's
//! `Committer`, whose task sends whatever has gathered in one round trip
//! (one script, and an `XACK` for each commit that writes nothing; in a
//! Redis Cluster, one such batch per slot, sent together). While one batch
//! is in flight the next gathers, so under load each call to Redis finishes
//! many deliveries, and a lone delivery is sent at once.
//!
//! A consumer may give its committer a [`Refill`]: then a batch that
//! finishes deliveries also reads new entries for the permits those
//! deliveries give back, in the same round trip as its commits (in a Redis
//! Cluster, when all the consumer's streams share a slot), and under load
//! the reader's own `XREADGROUP` calls (and the wake-ups around them)
//! mostly fall away.

use super::commit::{Commit, CommitAndRead, Committed, ReadAfter, commit_and_read};
use super::conn::Conn;
use super::error::Error;
use super::read::Delivery;
use super::slot;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Most commits sent in one batch.
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

/// What a [`Then`] calls. It gives back the permit of the delivery it
/// finished, if it is done with it: the next delivery a [`Refill`] read
/// runs on it.
type Finish = Box<dyn FnOnce(Result<Committed, Error>) -> Option<OwnedSemaphorePermit> + Send + Sync>;

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(then) = self.0.take() {
            drop(then(Err(Error::new("commit", super::ErrorKind::Stopped))));
        }
    }
}

impl Reply {
    /// Answers the job; the permit its function gave back, if any.
    fn send(self, result: Result<Committed, Error>) -> Option<OwnedSemaphorePermit> {
        match self {
            Reply::Wait(tx) => {
                drop(tx.send(result));
                None
            }
            Reply::Then(mut then) => (then.0.take().expect("called once"))(result),
        }
    }

    /// Whether its function may give a permit back.
    fn gives_back(&self) -> bool {
        matches!(self, Reply::Then(_))
    }
}

/// Where the new entries a batch reads go, and what else a batch found
/// that its consumer must know: the consumer that commits through this
/// committer. Called on the committer's task, which they must not hold up:
/// no waiting, no I/O.
pub trait Refill: Send + Sync + 'static {
    /// What the next batch may read for the `finishing` deliveries in it
    /// that may give a permit back; `None` when nothing is to be read
    /// (shutdown, or others wait for permits).
    fn room(&self, finishing: usize) -> Option<Room>;
    /// Runs `found`, new entries the batch given `room` read, on `permits`,
    /// given back by the deliveries it finished; any beyond them wait for
    /// permits as a read's do, and permits left over go back.
    fn found(&self, room: Room, found: Vec<Delivery>, permits: Vec<OwnedSemaphorePermit>);
    /// The reply of the batch given `room` was lost: entries may be
    /// pending with the consumer that nothing handles, to be taken back.
    fn lost(&self, room: Room);
    /// A batch handing keys on found these entries, (stream, id), deleted
    /// from their stream while pending: neither handled nor dead-lettered.
    fn deleted(&self, deleted: Vec<(String, String)>);
}

/// What one batch may read for a [`Refill`].
pub struct Room {
    /// The streams to read: the consumer's own (in a cluster, only read
    /// when they all share the batch's slot).
    pub streams: Arc<[String]>,
    /// The most entries to read of each (`COUNT` is per stream, as the
    /// reader's is: with several streams, more entries than permits may
    /// come, and the rest wait for permits).
    pub count: usize,
    /// Keeps the consumer's shutdown waiting until what the batch read is
    /// started, so that nothing it read is left behind unseen.
    pub tracked: TaskTrackerToken,
    /// Kept until what the batch read is held by the consumer, or its reply
    /// is lost: its read is in flight meanwhile, and a consumer taking back
    /// what a lost reply left behind waits for it.
    pub in_flight: Box<dyn Send + Sync>,
}

impl Committer {
    /// Starts the task that commits, through `group` as `consumer`, on
    /// `conn`; its batches also read for `refill`.
    pub fn start(conn: Conn, group: String, consumer: String, refill: Option<Box<dyn Refill>>) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, Who { group, consumer, refill }, rx));
        Committer { tx }
    }

    /// Commits `commit` in the next batch; see [`commit_batch`](super::commit::commit_batch) for the result.
    pub async fn commit(&self, commit: Arc<Commit>) -> Result<Committed, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { commit: commit.clone(), reply: Reply::Wait(reply) }).map_err(|_| stopped(&commit))?;
        answer.await.unwrap_or_else(|_| Err(stopped(&commit)))
    }

    /// Commits `commit` in the next batch and calls `then` with the result
    /// (as [`Committer::commit`] gives it) on the committer's task, which it
    /// must not hold up: no waiting, no I/O. `then` gives back its
    /// delivery's permit if it is done with it ([`Refill`]). At once, with
    /// an error, if the committer has stopped.
    pub fn commit_then(
        &self,
        commit: Arc<Commit>,
        then: impl FnOnce(Result<Committed, Error>) -> Option<OwnedSemaphorePermit> + Send + Sync + 'static,
    ) {
        let job = Job { commit, reply: Reply::Then(Then(Some(Box::new(then)))) };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            drop(job.reply.send(Err(stopped(&job.commit))));
        }
    }
}

/// The error of `commit` when the committer has stopped.
fn stopped(commit: &Commit) -> Error {
    let (stream, id) = commit.entry();
    Error::new(format!("commit of {stream} {id}"), super::ErrorKind::Stopped)
}

/// Whose commits these are: a group, and this host's consumer in it (and
/// where what its batches read goes).
struct Who {
    group: String,
    consumer: String,
    refill: Option<Box<dyn Refill>>,
}

async fn run(conn: Conn, who: Who, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        match &conn {
            Conn::Cluster(_) => commit_by_slot(&conn, &who, &mut jobs).await,
            _ => commit_together(conn.clone(), &who, &mut jobs, None).await,
        }
    }
}

/// Commits every job in one round trip and answers each; the batch also
/// reads what the consumer's [`Refill`] has room for. In a cluster, `slot`
/// is the slot of every job's stream, and the batch reads only if all of
/// the consumer's streams are in it (one call can only name keys of one
/// slot).
async fn commit_together(mut conn: Conn, who: &Who, jobs: &mut Vec<Job>, slot: Option<u16>) {
    let finishing = jobs.iter().filter(|j| j.reply.gives_back()).count();
    let room = who.refill.as_ref().and_then(|refill| refill.room(finishing));
    // In a cluster, only when all of the consumer's streams are in the
    // batch's slot: a batch that read only its own slot's streams would keep
    // its permits there, and a backlog in one slot would starve the others.
    let room = room.filter(|room| slot.is_none_or(|slot| room.streams.iter().all(|s| slot::of(s) == slot)));
    let read = room.as_ref().map_or(ReadAfter::NOTHING, |r| ReadAfter { streams: &r.streams, count: r.count });
    let commits = jobs.iter().map(|j| &*j.commit);
    match commit_and_read(&mut conn, &who.group, &who.consumer, commits, read).await {
        Ok(CommitAndRead { committed, found, deleted }) => {
            if let (Some(refill), false) = (&who.refill, deleted.is_empty()) {
                refill.deleted(deleted);
            }
            // What the read found stands whatever the commits' results.
            let permits: Vec<_> =
                jobs.drain(..).zip(committed).filter_map(|(job, result)| job.reply.send(result)).collect();
            if let (Some(refill), Some(room), false) = (&who.refill, room, found.is_empty()) {
                refill.found(room, found, permits);
            }
        }
        Err(e) => {
            for job in jobs.drain(..) {
                drop(job.reply.send(Err(e.clone())));
            }
            if let (Some(refill), Some(room)) = (&who.refill, room) {
                refill.lost(room);
            }
        }
    }
}

/// Commits the jobs in one batch per slot of their streams (a cluster
/// script touches one slot), all at once.
async fn commit_by_slot(conn: &Conn, who: &Who, jobs: &mut Vec<Job>) {
    let mut by_slot: BTreeMap<u16, Vec<Job>> = BTreeMap::new();
    for job in jobs.drain(..) {
        by_slot.entry(slot::of(job.commit.entry().0)).or_default().push(job);
    }
    let batches = by_slot.into_iter().map(|(slot, mut batch)| {
        let conn = conn.clone();
        async move { commit_together(conn, who, &mut batch, Some(slot)).await }
    });
    futures::future::join_all(batches).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting() -> (Reply, std::sync::mpsc::Receiver<Result<Committed, Error>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = Reply::Then(Then(Some(Box::new(move |result| {
            tx.send(result).unwrap();
            None
        }))));
        (reply, rx)
    }

    #[test]
    fn a_function_reply_is_called_once_with_the_result() {
        let (reply, rx) = counting();
        assert!(reply.send(Ok(Committed::Done)).is_none());
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
