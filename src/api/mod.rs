//! The daemon's HTTP API, served with axum.
//!
//! | route | who |
//! |---|---|
//! | `GET /healthz`, `GET /readyz` (probes) | anyone (no token) |
//! | `GET` (and `HEAD`) `/metrics`, `/v1/status`, `/v1/jobs`, `/v1/jobs/{id}`, `/v1/policies`, `/v1/policies/{id}/snapshots`, `/v1/drills`, `/v1/drills/{name}`, `/v1/reports/{id}`, `/v1/reports/{id}/html`, `/v1/audit` | auditor, operator |
//! | `POST /v1/policies/{id}/backup`, `POST /v1/drills/{name}/run` (`202` with a job id) | operator |
//! | `/ui`, `/ui/…`: the read-only web console ([`console`]) | a console session (signed in with an auditor or operator token) |
//!
//! A drill is named by its definition (`restore-drills/NAME.toml`), a report by its id.
//! Errors, unknown routes included, are RFC 7807 problem documents ([`error`]).
//!
//! Authentication comes before the rate limit (`api.rate_limit_per_minute`, 429 with
//! `Retry-After`): a request with a valid token counts against its token, one without (or with
//! a wrong one, whose 401 counts too) against its source address, so anonymous traffic cannot
//! use up an operator's budget. `/healthz` and `/readyz` are never answered with 429 (a
//! probe must not fail because someone else flooded the API). The server itself
//! ([`server`]) caps connections and times out slow request heads.
//!
//! Bodies never carry secrets: policies are described without connection strings or key
//! paths, errors ([`ApiError`]) are the typed error chains (which name objects, never
//! credentials). Drill reports count only when validly signed by a trusted key: the others
//! are listed with `"trusted": false` and the verdict `untrusted`.

pub mod auth;
pub mod console;
pub mod error;
pub mod metrics;
pub mod server;

pub use error::ApiError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::Daemon;
use auth::{Client, RateLimiter, Role, Tokens};

/// Shared by the handlers.
pub struct ApiState {
    daemon: Daemon,
    tokens: Tokens,
    limiter: RateLimiter,
    /// The last storage checks `/readyz` made, and when.
    storage_checks: tokio::sync::Mutex<Option<(Instant, BTreeMap<String, String>)>>,
    /// Browsers signed in to the web console.
    sessions: console::Sessions,
}

/// Who called (set by the auth layer).
#[derive(Debug, Clone)]
struct Caller {
    name: String,
}

type St = State<Arc<ApiState>>;

/// The credentials of `Authorization: Bearer …` (the scheme is case-insensitive, RFC 9110
/// §11.1): `None` without the header or another scheme.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn guard(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return console::guard(st, addr, req, next).await;
    }
    let token = bearer(&req);
    let Some((name, role)) = token.and_then(|t| st.tokens.check(t)) else {
        // Without a valid token the request counts against its address, and so does the 401.
        return match st.limiter.hit(Client::address(addr.ip())) {
            Err(retry_after) => ApiError::RateLimited { retry_after },
            Ok(()) if token.is_some() => ApiError::InvalidToken,
            Ok(()) => ApiError::Unauthorized,
        }
        .into_response();
    };
    if let Err(retry_after) = st.limiter.hit(Client::Token(name.to_owned())) {
        return ApiError::RateLimited { retry_after }.into_response();
    }
    // HEAD is a GET without the body: reading, which every role may.
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && role != Role::Operator {
        return ApiError::ReadOnly {
            token: name.to_owned(),
        }
        .into_response();
    }
    if !reads && !st.daemon.status.snapshot().active {
        return ApiError::Standby.into_response();
    }
    req.extensions_mut().insert(Caller {
        name: name.to_owned(),
    });
    next.run(req).await
}

/// The router (exposed for tests).
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_route))
        .route("/v1/status", get(status))
        .route("/v1/policies", get(policies))
        .route("/v1/policies/{id}/snapshots", get(snapshots))
        .route("/v1/policies/{id}/backup", post(backup))
        .route("/v1/drills", get(drills))
        .route("/v1/drills/{name}", get(drill))
        .route("/v1/drills/{name}/run", post(drill_run))
        .route("/v1/reports/{id}", get(drill_report))
        .route("/v1/reports/{id}/html", get(drill_html))
        .route("/v1/audit", get(audit))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .merge(console::routes())
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::NoRoute {
                method: method.to_string(),
                path: uri.path().to_owned(),
            }
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_owned(),
            }
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// How long a storage check answered by `/readyz` is reused, and how long one may take.
const STORAGE_CHECK_TTL: Duration = Duration::from_secs(15);
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Kubernetes readiness, without a token: `200` once the configuration is loaded and the
/// scheduler runs (this instance serves the API, as the active one or a standby: `role`);
/// `503` before. Each storage target's reachability is reported (`storage`, checked at most
/// every 15 s) but does not decide readiness: an outage of the object store must not take
/// the API that reports it out of the Service (alerts and `/v1/status` cover it).
async fn readyz(State(st): St) -> Response {
    let s = st.daemon.status.snapshot();
    let storage = storage_reachability(&st).await;
    let ready = s.started.is_some();
    let body = json!({
        "ready": ready,
        "config_loaded": true,
        "scheduler_running": ready,
        "role": if s.active { "active" } else { "standby" },
        "storage": storage,
        "version": s.version,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `{target: "reachable" | "unreachable: …"}`, from a cache refreshed after
/// [`STORAGE_CHECK_TTL`]: each check reads the repository's metadata object.
async fn storage_reachability(st: &ApiState) -> BTreeMap<String, String> {
    let mut cache = st.storage_checks.lock().await;
    if let Some((at, v)) = &*cache
        && at.elapsed() < STORAGE_CHECK_TTL
    {
        return v.clone();
    }
    let config = &st.daemon.config;
    let checks = config.storage.keys().map(|name| async move {
        let check = async {
            let s = crate::ops::storage(config, name).await?;
            s.head(&crate::repo::layout::repo_meta()).await?;
            Ok::<_, crate::ops::OpsError>(())
        };
        let state = match tokio::time::timeout(STORAGE_CHECK_TIMEOUT, check).await {
            Ok(Ok(())) => "reachable".to_owned(),
            Ok(Err(e)) => format!("unreachable: {}", crate::error::chain(&e)),
            Err(_) => format!(
                "unreachable: no answer in {} s",
                STORAGE_CHECK_TIMEOUT.as_secs()
            ),
        };
        (name.clone(), state)
    });
    let v: BTreeMap<String, String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    *cache = Some((Instant::now(), v.clone()));
    v
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format
/// otherwise, as the Prometheus client libraries negotiate.
async fn metrics_route(State(st): St, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let status = st.daemon.status.snapshot();
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(&status),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render_classic(&status),
        )
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn status(State(st): St) -> Response {
    axum::Json(st.daemon.status.snapshot()).into_response()
}

/// The backups and drills running now, each with bytes, total, percent, rate and ETA.
async fn jobs(State(st): St) -> Response {
    axum::Json(json!({ "jobs": st.daemon.jobs.list() })).into_response()
}

/// One job, running or among the last finished (`state`, `result`, `error`).
async fn job(State(st): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    id.parse()
        .ok()
        .and_then(|n| st.daemon.jobs.get(n))
        .map(|j| axum::Json(j).into_response())
        .ok_or(ApiError::UnknownJob(id))
}

/// The answer to accepted work: `202`, the job and where to follow it.
fn accepted(job: u64, what: serde_json::Value) -> Response {
    let location = format!("/v1/jobs/{job}");
    let mut body = json!({ "job": job, "status": location });
    if let (Some(b), Some(w)) = (body.as_object_mut(), what.as_object()) {
        b.extend(w.clone());
    }
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response()
}

fn policy_summary(config: &Config) -> serde_json::Value {
    config
        .policies
        .values()
        .map(|p| {
            json!({
                "id": p.id.as_str(),
                "source": crate::source::AnySource::from_spec(&p.source).kind(),
                "schedule": p.schedule.expr(),
                "timezone": p.schedule.timezone().name(),
                "targets": p.targets,
                "rpo_seconds": p.rpo.as_secs(),
                "rto_seconds": p.rto.as_secs(),
                "retention": {
                    "keep_last": p.retention.keep_last, "hourly": p.retention.hourly,
                    "daily": p.retention.daily, "weekly": p.retention.weekly,
                    "monthly": p.retention.monthly, "yearly": p.retention.yearly,
                    "wal_window_seconds": p.retention.wal_window.map(|w| w.as_secs()),
                },
            })
        })
        .collect()
}

async fn policies(State(st): St) -> Response {
    axum::Json(policy_summary(&st.daemon.config)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionQuery {
    region: Option<String>,
}

async fn snapshots(
    State(st): St,
    Path(id): Path<String>,
    q: Result<Query<RegionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let config = &st.daemon.config;
    let p = config
        .policy(&id)
        .map_err(|_| ApiError::UnknownPolicy(id.clone()))?;
    // Only the policy's own targets: anything else is the client's mistake, not ours.
    if let Some(region) = &q.region
        && !p.targets.contains(region)
    {
        return Err(ApiError::UnknownRegion {
            policy: id,
            region: region.clone(),
            targets: p.targets.join(", "),
        });
    }
    let r = async {
        let repo = crate::ops::read_repo(config, p, q.region.as_deref()).await?;
        let mut out = Vec::new();
        for sid in repo.committed(&id).await? {
            let refs = repo.read_refs(&id, &sid).await?;
            out.push(json!({
                "id": sid.as_str(), "started": refs.started, "finished": refs.finished,
                "bytes_read": refs.bytes_total, "bytes_stored": refs.bytes_new,
                "artifacts": refs.artifacts, "facts": refs.facts,
            }));
        }
        Ok::<_, crate::ops::OpsError>(out)
    }
    .await;
    match r {
        Ok(v) => Ok(axum::Json(v).into_response()),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

async fn backup(
    State(st): St,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Response, ApiError> {
    let config = st.daemon.config.clone();
    if config.policy(&id).is_err() {
        return Err(ApiError::UnknownPolicy(id));
    }
    let running = st
        .daemon
        .status
        .snapshot()
        .policies
        .get(&id)
        .is_some_and(|p| p.running);
    if running {
        return Err(ApiError::Running(format!("a backup of {id}")));
    }
    let d = st.daemon.clone();
    let (who, pid) = (caller.name.clone(), id.clone());
    let job = d.backup_job(&id);
    let job_id = job.id();
    st.daemon.tracker.spawn(async move {
        let r = d.backup(&pid, job, d.jobs_cancel.child_token()).await;
        crate::audit::record(
            &d.config,
            crate::audit::Event::new(
                crate::audit::Via::Api,
                &who,
                crate::audit::Action::Backup,
                &pid,
                r.map_err(|e| crate::error::chain(&e)),
            ),
        )
        .await;
    });
    Ok(accepted(job_id, json!({ "policy": id })))
}

async fn drill_run(
    State(st): St,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Response, ApiError> {
    if !st.daemon.config.drills.contains_key(&name) {
        return Err(ApiError::UnknownDrill(name));
    }
    if st
        .daemon
        .status
        .snapshot()
        .drills
        .get(&name)
        .is_some_and(|d| d.running)
    {
        return Err(ApiError::Running(format!("drill {name}")));
    }
    let d = st.daemon.clone();
    let (who, n) = (caller.name.clone(), name.clone());
    let job = d.drill_job(&name);
    let job_id = job.id();
    st.daemon.tracker.spawn(async move {
        let by = crate::daemon::StartedBy::Token(who);
        let _ = d.drill(&n, by, job, d.jobs_cancel.child_token()).await;
    });
    Ok(accepted(job_id, json!({ "drill": name })))
}

/// A report as listed: verdict, trust, objectives, where to read it.
fn report_line(s: &crate::drill::report::Signed) -> serde_json::Value {
    let r = &s.report;
    json!({
        "id": r.id, "drill": r.drill, "policy": r.policy,
        "verdict": s.verdict(), "trusted": s.trusted,
        "signature_valid": s.signature_valid, "claimed_verdict": r.verdict,
        "started": r.started, "region": r.region,
        "rto_seconds": r.rto.seconds, "rpo_seconds": r.rpo.seconds,
        "url": format!("/v1/reports/{}", r.id),
        "html": format!("/v1/reports/{}/html", r.id),
    })
}

async fn drills(State(st): St) -> Result<Response, ApiError> {
    let reports = crate::drill::store::all_reports(&st.daemon.config)
        .await
        .map_err(|e| ApiError::Internal(crate::error::chain(&e)))?;
    let list: Vec<_> = reports.iter().rev().map(report_line).collect();
    Ok(
        axum::Json(json!({ "drills": st.daemon.status.snapshot().drills, "reports": list }))
            .into_response(),
    )
}

/// Drill `name`: its state in this daemon and its reports, newest first.
async fn drill(State(st): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    if !st.daemon.config.drills.contains_key(&name) {
        return Err(ApiError::UnknownDrill(name));
    }
    let reports = crate::drill::store::all_reports(&st.daemon.config)
        .await
        .map_err(|e| ApiError::Internal(crate::error::chain(&e)))?;
    let list: Vec<_> = reports
        .iter()
        .rev()
        .filter(|s| s.report.drill == name)
        .map(report_line)
        .collect();
    let state = st.daemon.status.snapshot().drills.get(&name).cloned();
    Ok(axum::Json(json!({ "drill": name, "state": state, "reports": list })).into_response())
}

/// The report `id` and the history of its drill.
async fn find_report(
    config: &Config,
    id: &str,
) -> Result<
    (
        crate::drill::report::Signed,
        Vec<crate::drill::report::Signed>,
    ),
    ApiError,
> {
    let all = crate::drill::store::all_reports(config)
        .await
        .map_err(|e| ApiError::Internal(crate::error::chain(&e)))?;
    let found = all
        .iter()
        .find(|s| s.report.id == id)
        .cloned()
        .ok_or_else(|| ApiError::UnknownReport(id.to_owned()))?;
    let history = crate::drill::store::history(&all, &found);
    Ok((found, history))
}

async fn drill_report(State(st): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (s, _) = find_report(&st.daemon.config, &id).await?;
    Ok(axum::Json(crate::drill::store::describe(&s)).into_response())
}

async fn drill_html(State(st): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (s, history) = find_report(&st.daemon.config, &id).await?;
    Ok(Html(crate::drill::html::render(&s, &history)).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
}

async fn audit(
    State(st): St,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let bound = |name: &str, v: Option<&str>| {
        v.map(crate::audit::parse_bound)
            .transpose()
            .map_err(|e| ApiError::BadQuery(format!("{name}: {e}")))
    };
    let since = bound("since", q.since.as_deref())?;
    let until = bound("until", q.until.as_deref())?;
    let config = &st.daemon.config;
    let r = async {
        let target = crate::audit::audit_target(config)
            .ok_or_else(|| crate::ops::OpsError::Usage("no storage target".to_owned()))?;
        let s = crate::ops::storage(config, target).await?;
        Ok::<_, crate::ops::OpsError>(crate::audit::list(&s, since, until).await?)
    }
    .await;
    match r {
        Ok(v) => Ok(axum::Json(v).into_response()),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

/// The state for `daemon`, loading the tokens file.
///
/// # Errors
/// A bad tokens file.
pub fn state(daemon: Daemon) -> Result<Arc<ApiState>, server::ServeError> {
    let api = &daemon.config.api;
    let tokens = match &api.tokens_file {
        Some(f) => Tokens::load(f).map_err(server::ServeError::Tokens)?,
        None => {
            tracing::warn!("api.tokens_file is not set: every API route but /healthz answers 401.");
            Tokens::default()
        }
    };
    Ok(Arc::new(ApiState {
        limiter: RateLimiter::new(api.rate_limit_per_minute),
        tokens,
        daemon,
        storage_checks: tokio::sync::Mutex::new(None),
        sessions: console::Sessions::default(),
    }))
}

/// Serves the API until `stop` (see [`server`] for the connection cap and timeouts).
///
/// # Errors
/// Binding the address or the TLS files.
pub async fn serve(
    state: Arc<ApiState>,
    stop: CancellationToken,
) -> Result<(), server::ServeError> {
    let api = state.daemon.config.api.clone();
    let tls = match &api.tls {
        Some((cert, key)) => Some(server::tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = server::listen(api.listen)?;
    tracing::info!(
        listen = %api.listen,
        tls = tls.is_some(),
        max_connections = api.max_connections,
        header_read_timeout_seconds = api.header_read_timeout.as_secs_f64(),
        "API listening."
    );
    let limits = server::Limits {
        max_connections: api.max_connections,
        header_read_timeout: api.header_read_timeout,
    };
    server::run(listener, tls, router(state), limits, stop).await;
    Ok(())
}
