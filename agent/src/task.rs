//! What every daemon task is given, and how a task says that its outbox
//! writes fail.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::outbox::Outbox;

/// The handles every task of the daemon gets.
#[derive(Clone)]
pub struct TaskContext {
    pub config: AgentConfig,
    pub outbox: Outbox,
    /// Wakes the stream when something was queued.
    pub wake: Arc<crate::stream::Wake>,
    pub shutdown: CancellationToken,
}

/// A task's outbox writes failing for a passing cause (a full disk, an I/O
/// error, a lock): said once when they start failing and once when they
/// work again, while the task retries, instead of the task (and with it
/// the daemon) stopping. Any other failure (a file gone corrupt) still ends
/// the task, so the daemon restarts and the outbox's open moves a damaged
/// file aside.
#[derive(Debug, Default)]
pub struct WriteTrouble {
    said: Option<String>,
}

impl WriteTrouble {
    pub fn failed(&mut self, task: &str, error: crate::outbox::OutboxError) -> anyhow::Result<()> {
        if !error.is_transient() {
            return Err(error.into());
        }
        let text = error.to_string();
        if self.said.as_ref() != Some(&text) {
            tracing::error!(task, error = %text, "cannot write to the outbox; will retry");
            self.said = Some(text);
        }
        Ok(())
    }

    pub fn cleared(&mut self, task: &str) {
        if self.said.take().is_some() {
            tracing::info!(task, "writing to the outbox again");
        }
    }
}
