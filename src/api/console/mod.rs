//! The read-only web console at `/ui`, for auditors and operators: policies with their state
//! and recoverable windows, drills with their history and trend, every report, the audit log,
//! and the evidence export as a download. Server-rendered HTML with inline CSS and SVG: no
//! scripts, no build toolchain.
//!
//! **Sign-in**: an API token (auditor or operator) is given once on `/ui/login`; the console
//! then holds a session: a random 256-bit id in the cookie `dr_session`
//! (`Path=/ui; Secure; HttpOnly; SameSite=Strict`, 8 h), stored only as its SHA-256 here. The
//! cookie is good for `/ui` alone: the API (`/v1/…`, `/metrics`) still wants a bearer token,
//! so a browser session cannot start a backup or a drill, whatever its role. Every console
//! page is a GET; the only forms that post are sign-in and sign-out (SameSite=Strict keeps
//! other sites from posting them with the cookie).
//!
//! Every answer carries a Content-Security-Policy that allows no script, no frame and no
//! foreign form target, `no-store` caching and `no-referrer`.

mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::auth::{Client, Role};
use super::{ApiError, ApiState, St};

/// The session cookie's name.
pub const COOKIE: &str = "dr_session";

/// How long a sign-in lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Sessions kept at most (the oldest goes first): only a valid token makes one, so this
/// bounds memory, not access.
const MAX_SESSIONS: usize = 1024;

/// What the console's answers say about themselves.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Who is signed in.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// The token's name.
    pub name: String,
    pub role: Role,
    expires: Instant,
}

/// Signed-in browsers, by the SHA-256 of their cookie.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

impl Sessions {
    /// A new session for the token `name`; returns the cookie value.
    fn create(&self, name: &str, role: Role) -> String {
        let id =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut map = self.0.lock().expect("sessions lock");
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            Sha256::digest(id.as_bytes()).into(),
            Session {
                name: name.to_owned(),
                role,
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    fn get(&self, cookie: &str) -> Option<Session> {
        let key: [u8; 32] = Sha256::digest(cookie.as_bytes()).into();
        let mut map = self.0.lock().expect("sessions lock");
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remove(&self, cookie: &str) {
        let key: [u8; 32] = Sha256::digest(cookie.as_bytes()).into();
        self.0.lock().expect("sessions lock").remove(&key);
    }
}

/// The `dr_session` cookie of a request.
fn cookie(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_owned())
        })
}

/// Authentication of `/ui`: sign-in is open (its posts count against the address's rate
/// limit), everything else needs a live session (else to the sign-in page) and is a GET,
/// but for sign-out.
pub(super) async fn guard(
    st: Arc<ApiState>,
    addr: SocketAddr,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let mut resp = if path == "/ui/login" {
        if method == Method::POST
            && let Err(retry_after) = st.limiter.hit(Client::address(addr.ip()))
        {
            ApiError::RateLimited { retry_after }.into_response()
        } else {
            next.run(req).await
        }
    } else {
        match cookie(&req).and_then(|c| st.sessions.get(&c)) {
            None => Redirect::to("/ui/login").into_response(),
            Some(s) => {
                if let Err(retry_after) = st.limiter.hit(Client::Token(s.name.clone())) {
                    ApiError::RateLimited { retry_after }.into_response()
                } else if !matches!(method, Method::GET | Method::HEAD) && path != "/ui/logout" {
                    ApiError::MethodNotAllowed {
                        method: method.to_string(),
                        path,
                    }
                    .into_response()
                } else {
                    req.extensions_mut().insert(s);
                    next.run(req).await
                }
            }
        }
    };
    let h = resp.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

/// The console's routes (mounted under the API's router, behind [`guard`]).
pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/policies/{id}", get(policy))
        .route("/ui/drills", get(drills))
        .route("/ui/drills/{name}", get(drill))
        .route("/ui/reports/{id}", get(report))
        .route("/ui/audit", get(audit))
        .route("/ui/evidence", get(evidence))
        .route("/ui/evidence/bundle.tar.gz", get(evidence_download))
}

async fn login_page() -> Html<String> {
    Html(pages::login(None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Whether a browser would drop the `Secure` session cookie: plain HTTP to a host that is not
/// loopback (browsers keep Secure cookies over HTTP only for `localhost` and `127.0.0.1`).
fn cookie_would_be_dropped(tls: bool, host: Option<&str>) -> bool {
    if tls {
        return false;
    }
    let host = host.unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    !(name == "localhost" || name == "::1" || name.starts_with("127."))
}

async fn login(
    State(st): St,
    headers: axum::http::HeaderMap,
    axum::Form(f): axum::Form<LoginForm>,
) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if cookie_would_be_dropped(st.daemon.config.api.tls.is_some(), host) {
        return (
            StatusCode::BAD_REQUEST,
            Html(pages::login(Some(
                "This console needs HTTPS here: browsers keep its Secure session cookie over plain HTTP only on localhost. Serve the API with api.tls_cert_file and api.tls_key_file (or behind a TLS proxy), or open it on localhost.",
            ))),
        )
            .into_response();
    }
    let Some((name, role)) = st.tokens.check(f.token.trim()) else {
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("That token is not valid."))),
        )
            .into_response();
    };
    let id = st.sessions.create(name, role);
    tracing::info!(token = name, role = ?role, "Console sign-in.");
    let set = format!(
        "{COOKIE}={id}; Path=/ui; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    ([(header::SET_COOKIE, set)], Redirect::to("/ui")).into_response()
}

async fn logout(State(st): St, req: Request) -> Response {
    if let Some(c) = cookie(&req) {
        st.sessions.remove(&c);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/ui; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

type Who = axum::Extension<Session>;

async fn overview(State(st): St, axum::Extension(who): Who) -> Html<String> {
    let info = crate::ops::info::gather(&st.daemon.config, None, &[]).await;
    let status = st.daemon.status.snapshot();
    Html(pages::overview(&who, &info, &status))
}

async fn policy(
    State(st): St,
    axum::Extension(who): Who,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    if st.daemon.config.policy(&id).is_err() {
        return Err(ApiError::UnknownPolicy(id));
    }
    let info = crate::ops::info::gather(&st.daemon.config, Some(&id), &[]).await;
    let p = info
        .policies
        .iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::UnknownPolicy(id.clone()))?;
    let status = st.daemon.status.snapshot();
    Ok(Html(pages::policy(&who, p, status.policies.get(&id))))
}

async fn reports(st: &ApiState) -> Result<Vec<crate::drill::report::Signed>, ApiError> {
    crate::drill::store::all_reports(&st.daemon.config)
        .await
        .map_err(|e| ApiError::Internal(crate::error::chain(&e)))
}

async fn drills(State(st): St, axum::Extension(who): Who) -> Result<Html<String>, ApiError> {
    let all = reports(&st).await?;
    Ok(Html(pages::drills(&who, &st.daemon.config, &all)))
}

async fn drill(
    State(st): St,
    axum::Extension(who): Who,
    Path(name): Path<String>,
) -> Result<Html<String>, ApiError> {
    let Some(def) = st.daemon.config.drills.get(&name) else {
        return Err(ApiError::UnknownDrill(name));
    };
    let all = reports(&st).await?;
    Ok(Html(pages::drill(&who, def, &all)))
}

async fn report(
    State(st): St,
    axum::Extension(who): Who,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    let (s, history) = super::find_report(&st.daemon.config, &id).await?;
    Ok(Html(pages::report(&who, &s, &history)))
}

#[derive(serde::Deserialize)]
struct Period {
    since: Option<String>,
    until: Option<String>,
}

async fn audit(
    State(st): St,
    axum::Extension(who): Who,
    Query(q): Query<Period>,
) -> Result<Html<String>, ApiError> {
    let bound = |name: &str, v: Option<&str>| {
        v.filter(|v| !v.trim().is_empty())
            .map(crate::audit::parse_bound)
            .transpose()
            .map_err(|e| ApiError::BadQuery(format!("{name}: {e}")))
    };
    let since = bound("since", q.since.as_deref())?
        .or_else(|| Some(chrono::Utc::now() - chrono::Duration::days(7)));
    let until = bound("until", q.until.as_deref())?;
    let config = &st.daemon.config;
    let events = async {
        let target = crate::audit::audit_target(config)
            .ok_or_else(|| crate::ops::OpsError::Usage("no storage target".to_owned()))?;
        let s = crate::ops::storage(config, target).await?;
        Ok::<_, crate::ops::OpsError>(crate::audit::list(&s, since, until).await?)
    }
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Html(pages::audit(&who, &events, since, until)))
}

async fn evidence(State(st): St, axum::Extension(who): Who) -> Html<String> {
    Html(pages::evidence(&who, &st.daemon.config))
}

#[derive(serde::Deserialize)]
struct ExportQuery {
    from: String,
    to: String,
    policy: Option<String>,
}

/// The evidence bundle of a period as `.tar.gz`, made in a temporary directory.
async fn evidence_download(
    State(st): St,
    axum::Extension(who): Who,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let req = crate::evidence::Request {
        from: crate::audit::parse_bound(&q.from)
            .map_err(|e| ApiError::BadQuery(format!("from: {e}")))?,
        to: crate::evidence::parse_end(&q.to)
            .map_err(|e| ApiError::BadQuery(format!("to: {e}")))?,
        policy: q.policy.filter(|p| !p.is_empty()),
    };
    let config = &st.daemon.config;
    let tmp = tempfile::tempdir_in(&config.state_dir)
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| ApiError::Internal(format!("a scratch directory: {e}")))?;
    let name = format!(
        "dr-evidence-{}-{}",
        req.from.format("%Y%m%d"),
        req.to.format("%Y%m%d")
    );
    let r = crate::evidence::export(config, &req, &tmp.path().join(&name)).await;
    crate::audit::record(
        config,
        crate::audit::Event::new(
            crate::audit::Via::Api,
            &who.name,
            crate::audit::Action::EvidenceExport,
            &format!(
                "{} .. {} (console download)",
                req.from.to_rfc3339(),
                req.to.to_rfc3339()
            ),
            r.as_ref().map(|_| ()).map_err(|e| crate::error::chain(e)),
        ),
    )
    .await;
    let summary = r.map_err(|e| match e {
        crate::evidence::EvidenceError::Usage(m) => ApiError::BadQuery(m),
        e => ApiError::Internal(crate::error::chain(&e)),
    })?;
    let bytes = tokio::fs::read(&summary.archive)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the bundle: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.tar.gz\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::cookie_would_be_dropped;

    #[test]
    fn plain_http_keeps_the_secure_cookie_only_on_loopback() {
        for host in [
            "127.0.0.1:7878",
            "localhost:7878",
            "localhost",
            "[::1]:7878",
            "127.0.0.2",
        ] {
            assert!(!cookie_would_be_dropped(false, Some(host)), "{host}");
        }
        for host in ["dr.internal:7878", "10.0.0.5:7878", "[fd00::1]:7878"] {
            assert!(cookie_would_be_dropped(false, Some(host)), "{host}");
            assert!(
                !cookie_would_be_dropped(true, Some(host)),
                "{host} over TLS"
            );
        }
        assert!(cookie_would_be_dropped(false, None));
    }

    #[test]
    fn the_overview_lists_groups_and_their_newest_run() {
        use crate::ops::info::{GroupInfo, Info, RunInfo};
        let who = super::Session {
            name: "auditor-jane".to_owned(),
            role: crate::api::auth::Role::Auditor,
            expires: std::time::Instant::now(),
        };
        let info = Info {
            schema: crate::ops::info::SCHEMA,
            generated: chrono::Utc::now(),
            policies: Vec::new(),
            broken: Vec::new(),
            running: Vec::new(),
            groups: vec![GroupInfo {
                id: "app<1>".to_owned(),
                members: vec!["pg-main".to_owned(), "redis-cache".to_owned()],
                max_skew_seconds: 900.0,
                schedule: None,
                runs: 3,
                last_run: Some(RunInfo {
                    run: "20261204T220000.000Z-1a2b3c4d".to_owned(),
                    finished: chrono::Utc::now(),
                    age_seconds: 120,
                    skew_seconds: 0.25,
                }),
                error: None,
            }],
        };
        let html = super::pages::overview(&who, &info, &Default::default());
        assert!(html.contains("<h2>Application groups</h2>"), "{html}");
        assert!(
            html.contains("app&lt;1&gt;") && !html.contains("app<1>"),
            "escaped: {html}"
        );
        assert!(html.contains("pg-main, redis-cache"), "{html}");
        assert!(
            html.contains("20261204T220000.000Z-1a2b3c4d") && html.contains("0.2 s"),
            "{html}"
        );
    }
}
