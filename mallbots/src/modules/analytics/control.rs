//! Who runs the analytics projection. A [`ProjectionRunner`] refuses to rebuild while its
//! live run is going, so a rebuild here stops the live run, rebuilds, and starts it again;
//! one rebuild at a time.

use std::sync::Arc;

use herald::Store;
use herald::projection::{ProjectionRunner, RebuildReport, RunError};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AnalyticsProjection;

/// The analytics runner and its live run. Cheap to clone (clones share both).
#[derive(Clone, Debug)]
pub struct AnalyticsControl {
    runner: ProjectionRunner,
    holder: Arc<str>,
    live: Arc<Mutex<Live>>,
}

#[derive(Debug, Default)]
struct Live {
    /// Set by `start`: the live run stops with the first, a rebuild with the second.
    tokens: Option<(CancellationToken, CancellationToken)>,
    /// The live run's own token (a child of the first) and task.
    run: Option<(CancellationToken, JoinHandle<Result<(), RunError>>)>,
}

/// Why a rebuild did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Another rebuild (or the app's shutdown) holds the runner.
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
        Self { runner, holder: holder.into(), live: Arc::default() }
    }

    /// The runner (for its status and progress).
    pub fn runner(&self) -> &ProjectionRunner {
        &self.runner
    }

    /// Starts the live run, stopped by `live_stop` (or [`stop`](Self::stop)); a rebuild is
    /// interrupted by `rebuild_stop` (its checkpoint is committed per batch, so the next run
    /// resumes where it stopped).
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
            Some(run) => self.stop_run(run).await,
            None => Ok(()),
        }
    }

    async fn stop_run(
        &self,
        (token, task): (CancellationToken, JoinHandle<Result<(), RunError>>),
    ) -> Result<(), RunError> {
        token.cancel();
        task.await.unwrap_or_else(|e| {
            Err(RunError::Aborted { projection: self.runner.name().to_owned(), reason: e.to_string() })
        })
    }

    /// Resets the read model and replays the event log from its start, then restarts the live
    /// run (if the app is running). [`RebuildError::Busy`] while another rebuild runs. The work
    /// is its own task: a caller that goes away (an HTTP client hanging up) must not leave the
    /// live run stopped.
    pub async fn rebuild(&self) -> Result<RebuildReport, RebuildError> {
        let live = self.live.clone().try_lock_owned().map_err(|_| RebuildError::Busy)?;
        let this = self.clone();
        match tokio::spawn(async move { this.rebuild_holding(live).await }).await {
            Ok(report) => Ok(report?),
            Err(e) => {
                Err(RunError::Aborted { projection: self.runner.name().to_owned(), reason: e.to_string() }.into())
            }
        }
    }

    async fn rebuild_holding(&self, mut live: OwnedMutexGuard<Live>) -> Result<RebuildReport, RunError> {
        if let Some(run) = live.run.take()
            && let Err(e) = self.stop_run(run).await
        {
            // The rebuild is the cure for most of these; the replay reports it again if not.
            tracing::warn!(error = %e, "the analytics projection had stopped with an error; rebuilding it");
        }
        let cancel = live.tokens.as_ref().map_or_else(CancellationToken::new, |(_, rebuild)| rebuild.child_token());
        let report = self.runner.rebuild(cancel).await;
        if let Some((live_stop, _)) = &live.tokens
            && !live_stop.is_cancelled()
        {
            live.run = Some(self.spawn(live_stop));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rebuild_while_another_holds_the_runner_is_refused() {
        let control = AnalyticsControl::new(Arc::new(herald::memory::MemoryStore::new()), "test".into());
        // Held as a running rebuild holds it (a rebuild that runs is covered over HTTP).
        let _held = control.live.clone().lock_owned().await;
        assert!(matches!(control.rebuild().await, Err(RebuildError::Busy)));
    }
}
