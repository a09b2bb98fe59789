//! One replication pass: every (primary, replica) pair of the selected policies.

use std::collections::BTreeMap;

use crate::config::{Config, Policy};
use crate::pipeline::{PipelineError, Repository};
use crate::replication::{self, ReplicationReport};

/// The outcome for one replica.
#[derive(Debug, serde::Serialize)]
pub struct PairOutcome {
    /// Primary target.
    pub primary: String,
    /// Replica target.
    pub replica: String,
    /// Policies whose objects were copied.
    pub policies: Vec<String>,
    /// The report (`None`: the primary has no repository yet), or the error with its causes.
    #[serde(flatten)]
    pub result: PairResult,
}

/// Success or failure of one pair.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PairResult {
    /// Copied what was missing.
    Replicated(ReplicationReport),
    /// Nothing to copy from yet.
    NoPrimary,
    /// Failed; the replica catches up next time.
    Failed {
        /// The error chain.
        error: String,
    },
}

/// The (primary, replica) pairs of `policies`, limited to replica `to`, with their policies.
pub fn pairs<'a>(
    policies: &[&'a Policy],
    to: Option<&str>,
) -> BTreeMap<(String, String), Vec<&'a str>> {
    let mut pairs: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for p in policies {
        for r in p
            .targets
            .iter()
            .skip(1)
            .filter(|r| to.is_none_or(|t| t == *r))
        {
            pairs
                .entry((p.targets[0].clone(), r.clone()))
                .or_default()
                .push(p.id.as_str());
        }
    }
    pairs
}

/// Replicates each pair once; a failing replica does not stop the others.
pub async fn run(config: &Config, policies: &[&Policy], to: Option<&str>) -> Vec<PairOutcome> {
    let mut out = Vec::new();
    for ((primary, replica), pols) in pairs(policies, to) {
        let result = match pair(config, &primary, &replica, &pols).await {
            Ok(Some(r)) => PairResult::Replicated(r),
            Ok(None) => PairResult::NoPrimary,
            Err(e) => PairResult::Failed {
                error: crate::error::chain(&e),
            },
        };
        out.push(PairOutcome {
            primary,
            replica,
            policies: pols.iter().map(|p| (*p).to_owned()).collect(),
            result,
        });
    }
    out
}

async fn pair(
    config: &Config,
    primary: &str,
    replica: &str,
    policies: &[&str],
) -> Result<Option<ReplicationReport>, super::OpsError> {
    let p = super::storage(config, primary).await?;
    let repo = match Repository::open(p, super::chunk_key(config)?, &config.state_dir).await {
        Ok(r) => r,
        Err(PipelineError::NoRepository { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let r = super::storage(config, replica).await?;
    Ok(Some(
        replication::replicate(
            &repo.storage,
            &r,
            &repo.meta,
            policies,
            config.pipeline.upload_concurrency,
        )
        .await?,
    ))
}
