//! What a run ends with: why it stopped, what failed, what the deadline cut.

use crate::admin::ServerEntry;
use crate::{Error, ShutdownReason};

/// What [`ServerManager::run`](crate::ServerManager::run) returns: why it stopped and what went wrong.
#[derive(Debug)]
#[must_use = "the report says whether the stop was clean; turn it into an exit status"]
pub struct Report {
    /// Why the process stopped.
    pub reason: ShutdownReason,
    /// Failures that make the stop unclean: required servers, hooks.
    pub failures: Vec<Error>,
    /// Failures of optional servers: logged and shown, not fatal.
    pub optional_failures: Vec<Error>,
    /// Requests still in flight when the drain deadline passed, all servers together.
    pub requests_cut: u64,
    /// Every server as it ended.
    pub servers: Vec<ServerEntry>,
}

/// The verdict of a [`Report`], from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything stopped cleanly.
    Clean,
    /// The drain deadline cut requests.
    RequestsCut,
    /// A required server or a hook failed.
    Failed,
}

impl Report {
    /// The verdict: `Failed` wins over `RequestsCut`, which wins over `Clean`.
    pub fn outcome(&self) -> Outcome {
        if !self.failures.is_empty() {
            Outcome::Failed
        } else if self.requests_cut > 0 {
            Outcome::RequestsCut
        } else {
            Outcome::Clean
        }
    }
}
