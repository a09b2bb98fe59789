//! Drill reports in the repository: signed and stored write-once, listed, judged against the
//! trusted signers, and described for the API and `dr drill show`.

use crate::config::{Config, Policy};
use crate::ops;
use crate::repo::layout::{self, ObjectKey};
use crate::storage::{PutMode, Storage};

use super::report::{self, Report};

/// Signs and stores a report (write-once) in the policy's primary repository.
pub(super) async fn store(
    config: &Config,
    policy: &Policy,
    report: &Report,
    key: &ed25519_dalek::SigningKey,
) -> Result<(), super::DrillError> {
    let storage = ops::storage(config, &policy.targets[0]).await?;
    storage
        .put(
            &layout::drill_report(&report.drill, &report.id),
            bytes::Bytes::from(report::sign(report, key)),
            PutMode::CreateOnly,
        )
        .await?;
    Ok(())
}

/// Every stored report of `drill` (or all drills) on one storage target, oldest first.
/// Unreadable ones are skipped with a warning.
///
/// # Errors
/// Listing fails.
pub async fn list_reports(
    storage: &Storage,
    drill: Option<&str>,
) -> Result<Vec<report::Signed>, super::DrillError> {
    let mut out = Vec::new();
    let mut keys: Vec<ObjectKey> = storage
        .list(&layout::drills_prefix(drill))
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.as_str().ends_with(".json"))
        .collect();
    keys.sort_by(|a, b| {
        a.as_str()
            .rsplit('/')
            .next()
            .cmp(&b.as_str().rsplit('/').next())
    });
    for k in keys {
        let what = format!("{k} in {}", storage.location());
        match storage.get(&k, None).await {
            Ok(b) => match report::open(&what, &b) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "Skipping an unreadable drill report."),
            },
            Err(e) => {
                tracing::warn!(object = %what, error = %e, "Skipping a drill report that cannot be read.")
            }
        }
    }
    Ok(out)
}

/// Reports of every drill of `config`, from each policy's primary target, oldest first, each
/// judged against [`trusted_signers`] ([`report::Signed::trusted`]).
///
/// # Errors
/// Listing fails.
pub async fn all_reports(config: &Config) -> Result<Vec<report::Signed>, super::DrillError> {
    let mut targets: Vec<&str> = config
        .policies
        .values()
        .map(|p| p.targets[0].as_str())
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let trusted = trusted_signers(config);
    let mut out = Vec::new();
    for t in targets {
        let s = ops::storage(config, t).await?;
        out.extend(list_reports(&s, None).await?);
    }
    for s in &mut out {
        s.judge(&trusted);
    }
    out.sort_by(|a, b| a.report.id.cmp(&b.report.id));
    Ok(out)
}

/// Public keys whose report signatures are trusted: `keys.trusted_signers` plus the key this
/// host signs with.
pub fn trusted_signers(config: &Config) -> Vec<String> {
    let mut out = config.keys.trusted_signers.clone();
    if let Some(f) = &config.keys.signing_key_file
        && let Ok(k) = report::load_signing_key(f)
    {
        out.push(hex::encode(k.verifying_key().to_bytes()));
    }
    out
}

/// Whether `signer` is one of the trusted keys (says nothing of a signature: see
/// [`report::Signed::trusted`]).
pub fn is_trusted(config: &Config, signer: &str) -> bool {
    trusted_signers(config)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(signer))
}

/// How many past drills the report page charts.
const CHART_DRILLS: usize = 30;

/// The reports of `s`'s drill up to and including it (`all` oldest first), the last
/// [`CHART_DRILLS`] of them: the history the report page charts.
pub fn history(all: &[report::Signed], s: &report::Signed) -> Vec<report::Signed> {
    let mine: Vec<&report::Signed> = all
        .iter()
        .filter(|h| h.report.drill == s.report.drill && h.report.id <= s.report.id)
        .collect();
    mine[mine.len().saturating_sub(CHART_DRILLS)..]
        .iter()
        .map(|h| (*h).clone())
        .collect()
}

/// A stored report with its signature status, as the API and `dr drill show --json` give it.
///
/// `verdict` is what the report counts as ([`report::Signed::verdict`]): `untrusted` unless
/// it is validly signed by a trusted key. An untrusted report's own `report.verdict` is
/// replaced by `untrusted` too, so that a consumer reading only that field is not misled; what
/// it claimed is `claimed_verdict` (and the signed bytes are `dr drill show --raw`).
pub fn describe(s: &report::Signed) -> serde_json::Value {
    let verdict = s.verdict();
    let mut report = serde_json::to_value(&s.report).expect("report serializes");
    report["verdict"] = serde_json::json!(verdict);
    serde_json::json!({
        "verdict": verdict,
        "trusted": s.trusted,
        "signature_valid": s.signature_valid,
        "trusted_signer": s.signer_trusted,
        "signer": s.signer,
        "claimed_verdict": s.report.verdict,
        "report": report,
    })
}
