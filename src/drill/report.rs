//! Drill reports: the versioned JSON evidence, its Ed25519 signature, and where reports live.
//!
//! A stored report is `drills/<drill>/<report-id>.json` in the policy's primary repository
//! (replicated like everything else), written once:
//!
//! ```text
//! DRSIG1 ed25519 <public-key hex> <signature hex>\n
//! <report JSON, exactly the signed bytes>
//! ```
//!
//! The signature covers the JSON bytes as stored, so any change to them fails verification;
//! trust comes from comparing the signer's key with `keys.trusted_signers` (or the configured
//! signing key), not from the key in the header. The schema is `docs/drill-report.schema.json`.

use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Schema identifier of this report version.
pub const SCHEMA: &str = "dr.drill-report/1";

/// The controls a passing drill evidences.
pub const CONTROLS: [(&str, &str); 4] = [
    (
        "ISO/IEC 27001:2022 A.8.13",
        "Information backup: backup copies are tested regularly",
    ),
    (
        "SOC 2 A1.3",
        "Recovery plan procedures supporting system recovery are tested",
    ),
    (
        "HIPAA 164.308(a)(7)(ii)(D)",
        "Testing and revision procedures for contingency plans",
    ),
    (
        "DORA Art. 12",
        "Backup policies and restoration and recovery procedures, tested periodically",
    ),
];

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    /// `builtin`, `sql` or `redis`.
    pub kind: String,
    /// What was expected, in words.
    pub expected: String,
    /// What was found.
    pub actual: String,
    pub passed: bool,
    /// Seconds it took.
    pub seconds: f64,
}

/// A measured objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// Measured, seconds (`None`: could not be measured, which fails the drill).
    pub seconds: Option<f64>,
    /// The objective, seconds.
    pub objective_seconds: f64,
    /// Measured ≤ objective.
    pub met: bool,
    /// How it was measured.
    pub basis: String,
}

/// The evidence of one drill run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// Report id (`<time>-<random>`).
    pub id: String,
    /// Drill name.
    pub drill: String,
    /// Policy restored.
    pub policy: String,
    /// Source type.
    pub source: String,
    /// What the drill concluded.
    pub verdict: Outcome,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
    /// Drill start.
    pub started: DateTime<Utc>,
    /// Drill end (sandbox torn down).
    pub finished: DateTime<Utc>,
    /// Storage target restored from.
    pub region: String,
    /// Its location (bucket/prefix or path; never credentials).
    pub repository: String,
    /// Snapshot restored.
    pub snapshot: Option<String>,
    /// When that snapshot was taken.
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Recovery point asked for (`latest`, or a time).
    pub target: String,
    /// Recovery point reached (last replayed transaction, snapshot time, …).
    pub reached: Option<String>,
    /// Recovery time.
    pub rto: Objective,
    /// Recovery point.
    pub rpo: Objective,
    /// Phase timings, seconds: `restore` (fetch + decrypt + decompress + write), `recovery`
    /// (server start + WAL replay), `checks`.
    pub timings: std::collections::BTreeMap<String, f64>,
    /// Bytes restored.
    pub bytes_restored: u64,
    /// `dr` and server versions.
    pub versions: std::collections::BTreeMap<String, String>,
    /// Every check, built-in ones first.
    pub checks: Vec<CheckResult>,
    /// Controls this drill evidences: (id, what it asks).
    pub controls: Vec<(String, String)>,
    /// Host the drill ran on.
    pub host: String,
    /// Who or what started it (absent in reports written before dr recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// SHA-256 (hex) of the drill definition file as it ran, so that an auditor can tell which
    /// version of `restore-drills/NAME.toml` produced this report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_sha256: Option<String>,
    /// Whether `region` is the policy's `primary` target or a `replica` (a drill from the
    /// primary does not show that a regional outage is survivable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_role: Option<String>,
    /// A group drill's application group (then `policy` is its first member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A group drill's members, each restored to the group's point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberResult>,
}

/// One member of a group drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberResult {
    /// The policy.
    pub policy: String,
    /// Its source type.
    pub source: String,
    /// Storage target restored from.
    pub region: String,
    /// Snapshot restored.
    pub snapshot: Option<String>,
    /// What it was recovered to (a time, a snapshot).
    pub target: String,
    /// The point reached.
    pub reached: Option<String>,
    /// Seconds between its point and the group's.
    pub skew_seconds: Option<f64>,
    /// Its restore and checks passed.
    pub passed: bool,
}

/// Who or what started a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// `schedule` (the daemon), `api` (an operator token) or `cli`.
    pub by: String,
    /// The token's name, the OS user by name, or `scheduler`.
    pub actor: String,
}

/// What a drill concluded, as its report states it (`pass` or `fail` in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Restored, every check passed, the objectives met.
    Pass,
    /// Anything else; the report's reasons say what.
    Fail,
}

impl Outcome {
    /// `pass` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stored report counts as here: its own verdict only when it is trusted (issue 15,
/// item 6: a report anyone can sign must never count as a pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Trusted, and the drill passed.
    Pass,
    /// Trusted, and the drill failed.
    Fail,
    /// Not validly signed by a trusted key: no evidence of anything, whatever it claims.
    Untrusted,
}

impl Verdict {
    /// `pass`, `fail` or `untrusted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Untrusted => "untrusted",
        }
    }

    /// The verdict of a report this host has just signed (or any trusted one).
    pub fn of_trusted(report: &Report) -> Self {
        match report.verdict {
            Outcome::Pass => Self::Pass,
            Outcome::Fail => Self::Fail,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A report as stored, with its signature status.
#[derive(Debug, Clone, Serialize)]
pub struct Signed {
    /// The report.
    pub report: Report,
    /// Signer's public key (hex).
    pub signer: String,
    /// Signature valid for the stored bytes.
    pub signature_valid: bool,
    /// The signer is one of the trusted keys ([`Signed::judge`]; `false` until judged).
    pub signer_trusted: bool,
    /// Signature valid *and* the signer trusted ([`Signed::judge`]; `false` until judged): only
    /// then does the report count.
    pub trusted: bool,
    /// The stored bytes (header + JSON), for export.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// Reading or verifying a stored report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Not a signed report.
    #[error("{0}: not a signed dr drill report (missing or malformed DRSIG1 header)")]
    Format(String),
    /// The signature does not match.
    #[error("{0}: the signature does not match the report: it was altered after signing")]
    BadSignature(String),
    /// Signed by a key nobody trusts.
    #[error("{what}: signed by {signer}, which is not a trusted signer (keys.trusted_signers)")]
    Untrusted {
        /// Object or file.
        what: String,
        /// Its key.
        signer: String,
    },
    /// JSON problem.
    #[error("{0}: {1}")]
    Json(String, String),
    /// Key file problem.
    #[error("signing key {0}: {1}")]
    Key(String, String),
}

/// Loads the signing key (a 64-hex-digit secret).
///
/// # Errors
/// Unreadable or malformed file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, ReportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ReportError::Key(path.display().to_string(), e.to_string()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| {
        ReportError::Key(
            path.display().to_string(),
            "not a 64-hex-digit Ed25519 secret (make one with `dr keygen --signing FILE`)"
                .to_owned(),
        )
    })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// A public key (hex) as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as OpenSSL reads it.
///
/// # Errors
/// Not 64 hex digits, or not a valid Ed25519 point.
pub fn public_key_pem(hex_key: &str) -> Result<String, ReportError> {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let bad = |why: &str| ReportError::Key(hex_key.to_owned(), why.to_owned());
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).map_err(|_| bad("not 64 hex digits"))?;
    VerifyingKey::from_bytes(&key)
        .map_err(|_| bad("not an Ed25519 public key"))?
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| bad(&e.to_string()))
}

/// A new signing key: (secret hex, public hex).
pub fn generate_signing_key() -> (String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    (
        hex::encode(key.to_bytes()),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

/// Signs: header line + the exact JSON bytes.
pub fn sign(report: &Report, key: &SigningKey) -> Vec<u8> {
    let body = serde_json::to_vec_pretty(report).expect("report serializes");
    let sig = key.sign(&body);
    let mut out = format!(
        "DRSIG1 ed25519 {} {}\n",
        hex::encode(key.verifying_key().to_bytes()),
        hex::encode(sig.to_bytes())
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Parses a stored report and checks its signature against its own header. Whether the signer
/// is trusted is [`check_trusted`]'s question.
///
/// # Errors
/// Format or JSON problems; a bad signature is reported in [`Signed::signature_valid`].
pub fn open(what: &str, bytes: &[u8]) -> Result<Signed, ReportError> {
    let fmt = || ReportError::Format(what.to_owned());
    let nl = bytes.iter().position(|&b| b == b'\n').ok_or_else(fmt)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| fmt())?;
    let parts: Vec<&str> = header.split(' ').collect();
    let ["DRSIG1", "ed25519", key_hex, sig_hex] = parts.as_slice() else {
        return Err(fmt());
    };
    let mut key = [0u8; 32];
    let mut sig = [0u8; 64];
    hex::decode_to_slice(key_hex, &mut key).map_err(|_| fmt())?;
    hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| fmt())?;
    let body = &bytes[nl + 1..];
    let signature_valid = VerifyingKey::from_bytes(&key)
        .map(|k| {
            k.verify(body, &ed25519_dalek::Signature::from_bytes(&sig))
                .is_ok()
        })
        .unwrap_or(false);
    let report: Report = serde_json::from_slice(body)
        .map_err(|e| ReportError::Json(what.to_owned(), e.to_string()))?;
    Ok(Signed {
        report,
        signer: (*key_hex).to_owned(),
        signature_valid,
        signer_trusted: false,
        trusted: false,
        raw: bytes.to_vec(),
    })
}

impl Signed {
    /// The exact signed bytes (the JSON after the header line) and the raw 64-byte signature,
    /// as an Ed25519 verifier without dr (`openssl pkeyutl -verify -rawin`) takes them.
    pub fn signed_parts(&self) -> Option<(&[u8], [u8; 64])> {
        let nl = self.raw.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&self.raw[..nl]).ok()?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(header.rsplit(' ').next()?, &mut sig).ok()?;
        Some((&self.raw[nl + 1..], sig))
    }

    /// Sets [`Signed::trusted`] against `trusted` signers (see [`check_trusted`]).
    pub fn judge(&mut self, trusted: &[String]) {
        self.signer_trusted = trusted.iter().any(|t| t.eq_ignore_ascii_case(&self.signer));
        self.trusted = check_trusted("", self, trusted).is_ok();
    }

    /// What this report counts as: [`Verdict::Untrusted`] unless trusted.
    pub fn verdict(&self) -> Verdict {
        if self.trusted {
            Verdict::of_trusted(&self.report)
        } else {
            Verdict::Untrusted
        }
    }
}

/// Fails unless the signature is valid and the signer is one of `trusted`.
///
/// # Errors
/// `BadSignature` or `Untrusted`.
pub fn check_trusted(what: &str, s: &Signed, trusted: &[String]) -> Result<(), ReportError> {
    if !s.signature_valid {
        return Err(ReportError::BadSignature(what.to_owned()));
    }
    if !trusted.iter().any(|t| t.eq_ignore_ascii_case(&s.signer)) {
        return Err(ReportError::Untrusted {
            what: what.to_owned(),
            signer: s.signer.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            schema: SCHEMA.to_owned(),
            id: "20261124T010000.000Z-00000000".to_owned(),
            drill: "pg-nightly".to_owned(),
            policy: "pg-main".to_owned(),
            source: "postgres".to_owned(),
            verdict: Outcome::Pass,
            reasons: vec![],
            started: Utc::now(),
            finished: Utc::now(),
            region: "us".to_owned(),
            repository: "s3://dr-us/prod/".to_owned(),
            snapshot: Some("20261124T000000.000Z-11111111".to_owned()),
            snapshot_time: Some(Utc::now()),
            target: "latest".to_owned(),
            reached: Some("2026-11-24 00:59:58+00".to_owned()),
            rto: Objective {
                seconds: Some(12.5),
                objective_seconds: 1800.0,
                met: true,
                basis: "drill start to checks passed".to_owned(),
            },
            rpo: Objective {
                seconds: Some(30.0),
                objective_seconds: 300.0,
                met: true,
                basis: "age of the newest archived WAL segment".to_owned(),
            },
            timings: [("restore".to_owned(), 5.0)].into_iter().collect(),
            bytes_restored: 1 << 20,
            versions: [("dr".to_owned(), "0.1.0".to_owned())]
                .into_iter()
                .collect(),
            checks: vec![],
            controls: CONTROLS
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
            host: "test".to_owned(),
            trigger: None,
            definition_sha256: None,
            region_role: None,
            group: None,
            members: Vec::new(),
        }
    }

    #[test]
    fn signed_reports_verify_and_any_change_breaks_them() {
        let (secret, public) = generate_signing_key();
        let mut s = [0u8; 32];
        hex::decode_to_slice(&secret, &mut s).unwrap();
        let key = SigningKey::from_bytes(&s);
        let r = sample();
        let bytes = sign(&r, &key);
        let mut opened = open("r", &bytes).unwrap();
        assert!(opened.signature_valid);
        assert_eq!(opened.report, r);
        assert_eq!(opened.verdict(), Verdict::Untrusted, "not judged yet");
        check_trusted("r", &opened, std::slice::from_ref(&public)).unwrap();
        assert!(matches!(
            check_trusted("r", &opened, &["00".repeat(32)]),
            Err(ReportError::Untrusted { .. })
        ));
        opened.judge(&["00".repeat(32)]);
        assert_eq!(opened.verdict(), Verdict::Untrusted);
        opened.judge(&[public.to_uppercase()]);
        assert_eq!(opened.verdict(), Verdict::Pass);
        // Flip the verdict in the stored bytes.
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"pass\"", "\"fail\"");
        let mut tampered = open("r", text.as_bytes()).unwrap();
        assert!(!tampered.signature_valid);
        tampered.judge(std::slice::from_ref(&public));
        assert_eq!(
            tampered.verdict(),
            Verdict::Untrusted,
            "a trusted signer, a bad signature"
        );
        assert!(matches!(
            check_trusted("r", &tampered, &[public]),
            Err(ReportError::BadSignature(_))
        ));
        assert!(open("r", b"{}").is_err());
    }
}

#[cfg(test)]
mod schema_tests {
    /// The documented schema names exactly the fields a report has, and the example follows it.
    #[test]
    fn schema_matches_the_report_type() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/drill-report.schema.json")).unwrap();
        let example: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/drill-report.example.json")).unwrap();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut props: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields: Vec<&str> = example
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        required.sort_unstable();
        props.sort_unstable();
        fields.sort_unstable();
        // Only a group drill's report has these (tests/integration/groups.rs checks one).
        props.retain(|p| !["group", "members"].contains(p));
        assert_eq!(props, fields);
        // Fields added later are optional, so that earlier reports still validate.
        let added = ["definition_sha256", "region_role", "trigger"];
        fields.retain(|f| !added.contains(f));
        assert_eq!(required, fields);
        assert_eq!(example["schema"], schema["properties"]["schema"]["const"]);
        let _: super::Report = serde_json::from_value(example).unwrap();
    }
}
