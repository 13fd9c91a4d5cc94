//! Who runs the analytics projection. Every analytics process runs it under the projection's
//! lease, so one projects and the others stand by (taking over when it stops or dies). A
//! rebuild, asked of any of them, resets the read model and the checkpoint in one transaction;
//! the lease holder, in whichever process, replays the log (`ProjectionRunner::rebuild_leased`),
//! and nobody's live run stops. One rebuild at a time per process.

use std::sync::Arc;

use herald::Store;
use herald::projection::{ProjectionRunner, RebuildReport, RunError};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AnalyticsProjection;

/// The analytics runner and its live run. Cheap to clone (clones share both).
#[derive(Clone, Debug)]
pub struct AnalyticsControl {
    runner: ProjectionRunner,
    holder: Arc<str>,
    live: Arc<Mutex<Live>>,
    rebuilding: Arc<Mutex<()>>,
}

#[derive(Debug, Default)]
struct Live {
    /// Set by `start`: the live run stops with the first, a rebuild request with the second.
    tokens: Option<(CancellationToken, CancellationToken)>,
    /// The live run's own token (a child of the first) and task.
    run: Option<(CancellationToken, JoinHandle<Result<(), RunError>>)>,
}

/// Why a rebuild did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Another rebuild requested of this process is running.
    #[error("an analytics rebuild is already running")]
    Busy,
    /// The runner failed.
    #[error(transparent)]
    Failed(#[from] RunError),
}

impl AnalyticsControl {
    /// A runner of [`AnalyticsProjection`] on `store`, not started. Its live run holds the
    /// projection's lease as `holder`, so of several analytics processes one projects at a
    /// time (the others stand by, and take over when it stops or dies).
    pub fn new(store: Arc<dyn Store>, holder: String) -> Self {
        let runner = ProjectionRunner::new(store, Arc::new(AnalyticsProjection));
        Self { runner, holder: holder.into(), live: Arc::default(), rebuilding: Arc::default() }
    }

    /// The runner (for its status and progress).
    pub fn runner(&self) -> &ProjectionRunner {
        &self.runner
    }

    /// Starts the live run, stopped by `live_stop` (or [`stop`](Self::stop)); a rebuild
    /// request stops waiting at `rebuild_stop` (the replay goes on in the live run).
    pub async fn start(&self, live_stop: CancellationToken, rebuild_stop: CancellationToken) {
        let mut live = self.live.lock().await;
        live.run = Some(self.spawn(&live_stop));
        live.tokens = Some((live_stop, rebuild_stop));
    }

    fn spawn(&self, parent: &CancellationToken) -> (CancellationToken, JoinHandle<Result<(), RunError>>) {
        let token = parent.child_token();
        let (runner, holder, cancel) = (self.runner.clone(), self.holder.to_string(), token.clone());
        let task = tokio::spawn(async move { runner.run_leased(holder, crate::module::LEASE_TTL, cancel).await });
        (token, task)
    }

    /// Stops the live run (no restart after this) and tells how it ended.
    pub async fn stop(&self) -> Result<(), RunError> {
        let mut live = self.live.lock().await;
        live.tokens = None;
        match live.run.take() {
            Some((token, task)) => {
                token.cancel();
                self.ended(task).await
            }
            None => Ok(()),
        }
    }

    async fn ended(&self, task: JoinHandle<Result<(), RunError>>) -> Result<(), RunError> {
        task.await.unwrap_or_else(|e| {
            Err(RunError::Aborted { projection: self.runner.name().to_owned(), reason: e.to_string() })
        })
    }

    /// Resets the read model and has the lease holder replay the event log from its start;
    /// returns when it has caught up with the log as it was at the reset. A live run of this
    /// process that had stopped with an error is started again first (a rebuild is the cure
    /// for most of those); if it stops with an error during the replay, so does the rebuild.
    /// [`RebuildError::Busy`] while another rebuild requested here runs. The work is its own
    /// task: a caller that goes away (an HTTP client hanging up) must not cut it short.
    pub async fn rebuild(&self) -> Result<RebuildReport, RebuildError> {
        let busy = self.rebuilding.clone().try_lock_owned().map_err(|_| RebuildError::Busy)?;
        let this = self.clone();
        match tokio::spawn(async move {
            let _busy = busy;
            this.rebuild_here().await
        })
        .await
        {
            Ok(report) => Ok(report?),
            Err(e) => {
                Err(RunError::Aborted { projection: self.runner.name().to_owned(), reason: e.to_string() }.into())
            }
        }
    }

    async fn rebuild_here(&self) -> Result<RebuildReport, RunError> {
        let cancel = {
            let mut live = self.live.lock().await;
            let Some((live_stop, rebuild_stop)) = live.tokens.clone() else {
                // Not running (tests, or shutting down): a rebuild in this task.
                return self.runner.rebuild(CancellationToken::new()).await;
            };
            if let Some((token, task)) = live.run.take_if(|(_, task)| task.is_finished()) {
                drop(token);
                if let Err(e) = self.ended(task).await {
                    tracing::warn!(error = %e, "the analytics projection had stopped with an error; starting it again");
                }
            }
            if live.run.is_none() && !live_stop.is_cancelled() {
                live.run = Some(self.spawn(&live_stop));
            }
            rebuild_stop.child_token()
        };
        let request = self.runner.rebuild_leased(cancel.clone());
        tokio::pin!(request);
        loop {
            let failed = async {
                loop {
                    let finished = self.live.lock().await.run.as_ref().is_none_or(|(_, task)| task.is_finished());
                    if finished {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                biased;
                report = &mut request => return report,
                () = failed => {
                    let mut live = self.live.lock().await;
                    match live.run.take() {
                        Some((_, task)) => {
                            self.ended(task).await?;
                            return Err(RunError::Aborted {
                                projection: self.runner.name().to_owned(),
                                reason: "the live run stopped during the rebuild".into(),
                            });
                        }
                        // Stopped by `stop` (the app's shutdown): the request ends with it.
                        None => cancel.cancel(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rebuild_while_another_is_requested_is_refused() {
        let control = AnalyticsControl::new(Arc::new(herald::memory::MemoryStore::new()), "test".into());
        // Held as a running rebuild holds it (a rebuild that runs is covered over HTTP).
        let _held = control.rebuilding.clone().lock_owned().await;
        assert!(matches!(control.rebuild().await, Err(RebuildError::Busy)));
    }
}
