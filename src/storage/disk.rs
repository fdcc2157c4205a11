//! The disk pool: dedicated OS threads that run every blocking storage job
//! (hashing, copies into and out of memory maps, flushes, rechecks).
//!
//! Async tasks hand jobs over a bounded channel, so a slow disk pushes back on
//! the peers that feed it instead of growing a queue without limit, and a page
//! fault never stalls a tokio worker.

use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, thiserror::Error)]
#[error("the disk pool has shut down")]
pub struct PoolClosed;

pub struct DiskPool {
    tx: async_channel::Sender<Job>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl DiskPool {
    /// `threads`, locked.
    fn workers(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        crate::locks::locked(&self.threads)
    }
}

impl DiskPool {
    /// `threads` = 0 means one per core (at least 2).
    pub fn new(threads: usize, queue: usize) -> DiskPool {
        let n = if threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2)
        } else {
            threads
        };
        let (tx, rx) = async_channel::bounded::<Job>(queue.max(1));
        let threads = (0..n)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("disk-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv_blocking() {
                            job();
                        }
                    })
                    .expect("spawn disk thread")
            })
            .collect();
        DiskPool { tx, threads: std::sync::Mutex::new(threads) }
    }

    /// Jobs waiting for a thread (`/metrics`: a disk that cannot keep up).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    pub fn threads(&self) -> usize {
        self.workers().len()
    }

    /// Runs `f` on a disk thread and waits for its result.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolClosed> {
        let (tx, rx) = oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(f());
        })
        .await?;
        rx.await.map_err(|_| PoolClosed)
    }

    /// Queues `f` without waiting for it to run (waits only for queue room).
    pub async fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), PoolClosed> {
        self.tx.send(Box::new(f)).await.map_err(|_| PoolClosed)
    }

    /// Queues `job` if there is room now. `Err(Some(job))` hands it back
    /// when the queue is full (to try again later), `Err(None)` when the
    /// pool has shut down.
    pub fn try_spawn(&self, job: Job) -> Result<(), Option<Job>> {
        self.tx.try_send(job).map_err(|e| match e {
            async_channel::TrySendError::Full(job) => Some(job),
            async_channel::TrySendError::Closed(_) => None,
        })
    }

    /// Lets queued jobs finish, then joins the threads.
    pub fn shutdown(&self) {
        self.tx.close();
        for t in self.workers().drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_shuts_down() {
        let pool = DiskPool::new(2, 4);
        let name = pool.run(|| std::thread::current().name().map(String::from)).await.unwrap();
        assert!(name.unwrap().starts_with("disk-"));
        let sum = pool.run(|| (1..=10).sum::<u32>()).await.unwrap();
        assert_eq!(sum, 55);
        pool.shutdown();
        assert!(pool.run(|| 1).await.is_err());
        assert!(matches!(pool.try_spawn(Box::new(|| {})), Err(None)));
    }

    #[test]
    fn a_full_queue_hands_the_job_back() {
        let pool = DiskPool::new(1, 1);
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        // One job occupies the thread, one fills the queue.
        assert!(pool
            .try_spawn(Box::new(move || {
                let _ = block_rx.recv();
            }))
            .is_ok());
        let mut queued = false;
        for _ in 0..1000 {
            match pool.try_spawn(Box::new(|| {})) {
                Ok(()) => queued = true,
                Err(Some(_)) if queued => break,
                Err(Some(_)) => std::thread::yield_now(),
                Err(None) => panic!("pool closed"),
            }
        }
        assert!(matches!(pool.try_spawn(Box::new(|| {})), Err(Some(_))), "full: the job comes back");
        block_tx.send(()).unwrap();
        pool.shutdown();
    }
}
