//! The daemon's HTTP API (DESIGN §9), served with axum.
//!
//! | route | who |
//! |---|---|
//! | `GET /healthz` | anyone (no token) |
//! | `GET /readyz`, `/metrics`, `/v1/status`, `/v1/policies`, `/v1/policies/{id}/snapshots`, `/v1/drills`, `/v1/drills/{id}`, `/v1/drills/{id}/report`, `/v1/audit` | auditor, operator |
//! | `POST /v1/policies/{id}/backup`, `POST /v1/drills/{name}/run` | operator |
//!
//! Every request counts against a per-IP limit (429 with `Retry-After`). Bodies never carry
//! secrets: policies are described without connection strings or key paths, errors are the
//! typed error chains (which name objects, never credentials).

pub mod auth;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::Daemon;
use auth::{RateLimiter, Role, Tokens};

/// Shared by the handlers.
pub struct ApiState {
    daemon: Daemon,
    tokens: Tokens,
    limiter: RateLimiter,
}

/// Who called (set by the auth layer).
#[derive(Debug, Clone)]
struct Caller {
    name: String,
}

type St = State<Arc<ApiState>>;

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": msg.to_string() }))).into_response()
}

fn internal(e: &anyhow::Error) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

async fn guard(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Err(wait) = st.limiter.hit(addr.ip()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded; slow down",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some((name, role)) = token.and_then(|t| st.tokens.check(t.trim())) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer …)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    if req.method() != Method::GET && role != Role::Operator {
        return error(
            StatusCode::FORBIDDEN,
            format!("token `{name}` has the auditor role, which is read-only"),
        );
    }
    if req.method() != Method::GET && !st.daemon.status.snapshot().active {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this instance is a standby; send it to the active one (see /v1/status `active`)",
        );
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
        .route("/v1/drills/{id}", get(drill_report))
        .route("/v1/drills/{id}/report", get(drill_html))
        .route("/v1/drills/{id}/run", post(drill_run))
        .route("/v1/audit", get(audit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn readyz(State(st): St) -> Response {
    let s = st.daemon.status.snapshot();
    axum::Json(json!({ "ready": s.started.is_some(), "active": s.active, "version": s.version }))
        .into_response()
}

async fn metrics_route(State(st): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&st.daemon.status.snapshot()),
    )
        .into_response()
}

async fn status(State(st): St) -> Response {
    axum::Json(st.daemon.status.snapshot()).into_response()
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
struct RegionQuery {
    region: Option<String>,
}

async fn snapshots(
    State(st): St,
    Path(id): Path<String>,
    Query(q): Query<RegionQuery>,
) -> Response {
    let config = &st.daemon.config;
    let Ok(p) = config.policy(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no policy `{id}`"));
    };
    let r = async {
        let repo = crate::ops::read_repo(config, p, q.region.as_deref()).await?;
        let mut out = Vec::new();
        for sid in repo.committed(&id).await? {
            let refs = repo.read_refs(&id, &sid).await?;
            out.push(json!({
                "id": sid.as_str(), "started": refs.started, "finished": refs.finished,
                "bytes_total": refs.bytes_total, "bytes_new": refs.bytes_new,
                "artifacts": refs.artifacts, "facts": refs.facts,
            }));
        }
        anyhow::Ok(out)
    }
    .await;
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => internal(&e),
    }
}

async fn backup(
    State(st): St,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let config = st.daemon.config.clone();
    if config.policy(&id).is_err() {
        return error(StatusCode::NOT_FOUND, format!("no policy `{id}`"));
    }
    let running = st
        .daemon
        .status
        .snapshot()
        .policies
        .get(&id)
        .is_some_and(|p| p.running);
    if running {
        return error(StatusCode::CONFLICT, format!("a backup of {id} is running"));
    }
    let d = st.daemon.clone();
    let (who, pid) = (caller.name.clone(), id.clone());
    st.daemon.tracker.spawn(async move {
        let r = d.backup(&pid, d.jobs_cancel.child_token()).await;
        crate::audit::record(
            &d.config,
            crate::audit::Event::new("api", &who, "backup", &pid, r.map_err(|e| format!("{e:#}"))),
        )
        .await;
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "accepted": true, "policy": id, "status": "/v1/status" })),
    )
        .into_response()
}

async fn drill_run(
    State(st): St,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if !st.daemon.config.drills.contains_key(&name) {
        return error(StatusCode::NOT_FOUND, format!("no drill `{name}`"));
    }
    if st
        .daemon
        .status
        .snapshot()
        .drills
        .get(&name)
        .is_some_and(|d| d.running)
    {
        return error(StatusCode::CONFLICT, format!("drill {name} is running"));
    }
    let d = st.daemon.clone();
    let (who, n) = (caller.name.clone(), name.clone());
    st.daemon.tracker.spawn(async move {
        let _ = d.drill(&n, &who, d.jobs_cancel.child_token()).await;
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "accepted": true, "drill": name, "status": "/v1/drills" })),
    )
        .into_response()
}

async fn drills(State(st): St) -> Response {
    let config = &st.daemon.config;
    match crate::drill::all_reports(config).await {
        Ok(reports) => {
            let list: Vec<_> = reports
                .iter()
                .rev()
                .map(|s| {
                    let r = &s.report;
                    json!({
                        "id": r.id, "drill": r.drill, "policy": r.policy, "verdict": r.verdict,
                        "started": r.started, "region": r.region,
                        "rto_seconds": r.rto.seconds, "rpo_seconds": r.rpo.seconds,
                        "signature_valid": s.signature_valid,
                        "report": format!("/v1/drills/{}/report", r.id),
                    })
                })
                .collect();
            axum::Json(json!({ "drills": st.daemon.status.snapshot().drills, "reports": list }))
                .into_response()
        }
        Err(e) => internal(&e),
    }
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
    Response,
> {
    let all = crate::drill::all_reports(config)
        .await
        .map_err(|e| internal(&e))?;
    let found = all
        .iter()
        .find(|s| s.report.id == id)
        .cloned()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no drill report `{id}`")))?;
    let history = crate::drill::history(&all, &found);
    Ok((found, history))
}

async fn drill_report(State(st): St, Path(id): Path<String>) -> Response {
    match find_report(&st.daemon.config, &id).await {
        Ok((s, _)) => {
            let trusted = crate::drill::is_trusted(&st.daemon.config, &s.signer);
            axum::Json(crate::drill::describe(&s, trusted)).into_response()
        }
        Err(r) => r,
    }
}

async fn drill_html(State(st): St, Path(id): Path<String>) -> Response {
    match find_report(&st.daemon.config, &id).await {
        Ok((s, history)) => {
            let trusted = crate::drill::is_trusted(&st.daemon.config, &s.signer);
            Html(crate::drill::html::render(&s, trusted, &history)).into_response()
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    since: Option<String>,
}

async fn audit(State(st): St, Query(q): Query<AuditQuery>) -> Response {
    let since = match q.since.as_deref().map(crate::pipeline::pitr::parse_time) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let config = &st.daemon.config;
    let r = async {
        let target = crate::audit::audit_target(config)
            .ok_or_else(|| anyhow::anyhow!("no storage target"))?;
        let s = crate::ops::storage(config, target).await?;
        crate::audit::list(&s, since).await
    }
    .await;
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => internal(&e),
    }
}

/// The state for `daemon`, loading the tokens file.
///
/// # Errors
/// A bad tokens file.
pub fn state(daemon: Daemon) -> anyhow::Result<Arc<ApiState>> {
    let api = &daemon.config.api;
    let tokens = match &api.tokens_file {
        Some(f) => Tokens::load(f).map_err(anyhow::Error::msg)?,
        None => {
            tracing::warn!("api.tokens_file is not set: every API route but /healthz answers 401.");
            Tokens::default()
        }
    };
    Ok(Arc::new(ApiState {
        limiter: RateLimiter::new(api.rate_limit_per_minute),
        tokens,
        daemon,
    }))
}

/// Serves the API until `stop`.
///
/// # Errors
/// Binding the address or the TLS files.
pub async fn serve(state: Arc<ApiState>, stop: CancellationToken) -> anyhow::Result<()> {
    let api = state.daemon.config.api.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    tracing::info!(listen = %api.listen, tls = api.tls.is_some(), "API listening.");
    match &api.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
            axum_server::bind_rustls(api.listen, cfg)
                .handle(handle)
                .serve(app)
                .await?;
        }
        None => {
            axum_server::bind(api.listen)
                .handle(handle)
                .serve(app)
                .await?;
        }
    }
    Ok(())
}
