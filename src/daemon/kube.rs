//! Leader election on a Kubernetes `coordination.k8s.io/v1` Lease, over the API server's REST
//! interface with the pod's service account (token and CA from
//! `/var/run/secrets/kubernetes.io/serviceaccount`). Optimistic concurrency does the rest:
//! every update carries the `resourceVersion` it read, and a concurrent change makes the API
//! server answer 409, so two instances can never both take the lease.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A Lease object.
pub struct KubeLease {
    http: reqwest::Client,
    api: String,
    namespace: String,
    name: String,
    token_file: Option<PathBuf>,
}

/// What to do with the Lease as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// It does not exist: create it.
    Create,
    /// Ours, or expired: update it (with this resourceVersion and transition count).
    Take {
        /// `metadata.resourceVersion` read.
        resource_version: String,
        /// `spec.leaseTransitions` to write.
        transitions: i64,
    },
    /// Someone else holds it.
    Wait,
}

fn micro(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Pure decision from the Lease JSON (`None` = 404).
pub fn decide(lease: Option<&Value>, holder: &str, now: DateTime<Utc>) -> Decision {
    let Some(l) = lease else {
        return Decision::Create;
    };
    let spec = &l["spec"];
    let current = spec["holderIdentity"].as_str().unwrap_or_default();
    let renewed = spec["renewTime"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(0);
    let expired =
        current.is_empty() || renewed.is_none_or(|r| r + chrono::Duration::seconds(duration) < now);
    if current != holder && !expired {
        return Decision::Wait;
    }
    let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0) + i64::from(current != holder);
    Decision::Take {
        resource_version: l["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        transitions,
    }
}

/// What the Kubernetes lease cannot do.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No API server was given and this is not a pod.
    #[error(
        "daemon.leader_election = \"kubernetes\": not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset); set daemon.kube_api or use \"bucket\""
    )]
    NotInPod,
    /// The service account's CA certificate cannot be read or used.
    #[error("{}: {detail}", path.display())]
    Ca {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The API server cannot be reached, or refuses (other than a lost race).
    #[error("lease {name}: {detail}")]
    Api {
        /// The Lease.
        name: String,
        /// The transport error or HTTP status.
        detail: String,
    },
}

impl KubeLease {
    /// The Lease `name` in the pod's namespace (or `namespace`), at the in-cluster API server
    /// (or `api`, for tests and out-of-cluster use).
    ///
    /// # Errors
    /// Not in a cluster and no `api` given, or the CA certificate cannot be read.
    pub fn new(name: &str, namespace: Option<&str>, api: Option<&str>) -> Result<Self, KubeError> {
        let sa = PathBuf::from(SA_DIR);
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let api = match api {
            Some(a) => a.trim_end_matches('/').to_owned(),
            None => {
                let host =
                    std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeError::NotInPod)?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let path = sa.join("ca.crt");
                let bad = |e: &dyn std::fmt::Display| KubeError::Ca {
                    path: path.clone(),
                    detail: e.to_string(),
                };
                let ca = std::fs::read(&path).map_err(|e| bad(&e))?;
                let cert = reqwest::Certificate::from_pem(&ca).map_err(|e| bad(&e))?;
                builder = builder.add_root_certificate(cert);
                format!("https://{host}:{port}")
            }
        };
        let namespace = match namespace {
            Some(n) => n.to_owned(),
            None => std::fs::read_to_string(sa.join("namespace"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "default".to_owned()),
        };
        let token_file = sa.join("token");
        Ok(Self {
            http: builder.build().map_err(|e| KubeError::Api {
                name: name.to_owned(),
                detail: e.to_string(),
            })?,
            api,
            namespace,
            name: name.to_owned(),
            token_file: token_file.exists().then_some(token_file),
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.api));
        // Projected tokens rotate: read it for every request.
        match self
            .token_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
        {
            Some(t) => r.bearer_auth(t.trim()),
            None => r,
        }
    }

    fn collection(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            self.namespace
        )
    }

    fn body(
        &self,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
        rv: Option<&str>,
        transitions: i64,
    ) -> Value {
        let mut metadata = json!({ "name": self.name, "namespace": self.namespace });
        if let Some(rv) = rv {
            metadata["resourceVersion"] = json!(rv);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": ttl.as_secs().max(1),
                "acquireTime": micro(now),
                "renewTime": micro(now),
                "leaseTransitions": transitions,
            }
        })
    }

    fn api_err(&self, detail: impl std::fmt::Display) -> KubeError {
        KubeError::Api {
            name: self.name.clone(),
            detail: detail.to_string(),
        }
    }

    async fn get(&self) -> Result<Option<Value>, KubeError> {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("{}/{}", self.collection(), self.name),
            )
            .send()
            .await
            .map_err(|e| self.api_err(e.without_url()))?;
        match r.status().as_u16() {
            404 => Ok(None),
            200 => r.json().await.map(Some).map_err(|e| self.api_err(e)),
            s => Err(self.api_err(format!("GET: HTTP {s}"))),
        }
    }

    /// Takes or renews; `Ok(true)` when `holder` holds the Lease afterwards.
    ///
    /// # Errors
    /// The API server cannot be reached or refuses (other than a lost race).
    pub async fn try_acquire(&self, holder: &str, ttl: Duration) -> Result<bool, KubeError> {
        let now = Utc::now();
        let current = self.get().await?;
        let r = match decide(current.as_ref(), holder, now) {
            Decision::Wait => return Ok(false),
            Decision::Create => self
                .req(reqwest::Method::POST, &self.collection())
                .json(&self.body(holder, ttl, now, None, 0)),
            Decision::Take {
                resource_version,
                transitions,
            } => self
                .req(
                    reqwest::Method::PUT,
                    &format!("{}/{}", self.collection(), self.name),
                )
                .json(&self.body(holder, ttl, now, Some(&resource_version), transitions)),
        };
        let r = r.send().await.map_err(|e| self.api_err(e.without_url()))?;
        match r.status().as_u16() {
            200 | 201 => Ok(true),
            409 => Ok(false),
            s => Err(self.api_err(format!("writing: HTTP {s}"))),
        }
    }

    /// Expires the Lease now if `holder` holds it.
    pub async fn release(&self, holder: &str) {
        let Ok(Some(l)) = self.get().await else {
            return;
        };
        if l["spec"]["holderIdentity"].as_str() != Some(holder) {
            return;
        }
        let rv = l["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut body = self.body(
            "",
            Duration::from_secs(1),
            Utc::now(),
            Some(&rv),
            l["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
        );
        body["spec"]["renewTime"] = json!(micro(DateTime::<Utc>::UNIX_EPOCH));
        let _ = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/{}", self.collection(), self.name),
            )
            .json(&body)
            .send()
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: DateTime<Utc>, secs: i64) -> Value {
        json!({ "metadata": { "resourceVersion": "42" }, "spec": { "holderIdentity": holder, "renewTime": micro(renewed), "leaseDurationSeconds": secs, "leaseTransitions": 3 } })
    }

    #[test]
    fn decisions() {
        let now = Utc::now();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&lease("b", now, 30)), "a", now), Decision::Wait);
        assert_eq!(
            decide(Some(&lease("a", now, 30)), "a", now),
            Decision::Take {
                resource_version: "42".into(),
                transitions: 3
            }
        );
        let old = now - chrono::Duration::seconds(31);
        assert_eq!(
            decide(Some(&lease("b", old, 30)), "a", now),
            Decision::Take {
                resource_version: "42".into(),
                transitions: 4
            }
        );
        assert_eq!(
            decide(Some(&lease("", now, 30)), "a", now),
            Decision::Take {
                resource_version: "42".into(),
                transitions: 4
            }
        );
    }
}
