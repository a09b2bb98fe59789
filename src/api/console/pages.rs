//! The console's pages, rendered from what the daemon and the repositories say. Pure: data
//! in, HTML out.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::Session;
use crate::config::{Config, Drill};
use crate::daemon::status::{DaemonStatus, PolicyStatus};
use crate::drill::report::{Signed, Verdict};
use crate::html::{esc, human, page};
use crate::ops::info::{Info, PolicyInfo};

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or("&mdash;".to_owned(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

fn verdict_cell(v: Option<Verdict>) -> String {
    match v {
        Some(v) => format!(
            "<td class=verdict-{}>{}</td>",
            v.as_str(),
            v.as_str().to_uppercase()
        ),
        None => "<td class=sub>no drill yet</td>".to_owned(),
    }
}

/// A console page: the navigation, who is signed in (with sign-out), then `body`.
fn frame(who: &Session, title: &str, body: &str) -> String {
    let role = match who.role {
        super::Role::Operator => "operator",
        super::Role::Auditor => "auditor",
    };
    page(
        &format!("{title} · dr console"),
        &format!(
            "<nav><a href=/ui>Overview</a><a href=/ui/drills>Drills</a><a href=/ui/audit>Audit log</a>\
             <a href=/ui/evidence>Evidence</a><span class=who>signed in as <b id=who>{}</b> ({role}) \
             <form method=post action=/ui/logout style=display:inline><button type=submit>Sign out</button></form></span></nav>{body}\
             <p class=sub>Read-only: this console starts nothing. Backups and drills are started by their \
             schedules, <code>dr</code> on the command line, or the API with an operator token.</p>",
            esc(&who.name)
        ),
    )
}

/// The sign-in page (with an error after a bad token).
pub(super) fn login(error: Option<&str>) -> String {
    page(
        "Sign in · dr console",
        &format!(
            "<h1>dr console</h1>{}<form method=post action=/ui/login>\
             <p><label for=token>API token (auditor or operator)</label><br>\
             <input id=token name=token type=password autocomplete=off size=60 required></p>\
             <p><button id=signin type=submit>Sign in</button></p></form>\
             <p class=sub>The token is checked once; the browser then holds a session cookie for this console only (8 hours).</p>",
            error.map_or(String::new(), |e| format!(
                "<p class=bad id=error>{}</p>",
                esc(e)
            ))
        ),
    )
}

fn window_text(p: &PolicyInfo) -> String {
    match &p.postgres {
        Some(pg) => match (pg.window.earliest, pg.window.latest) {
            (Some(a), Some(b)) => format!(
                "any point from {} to {}",
                a.format("%Y-%m-%d %H:%M:%S"),
                b.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => "no point yet (no base backup with its WAL)".to_owned(),
        },
        None => match (&p.oldest, &p.newest) {
            (Some(a), Some(b)) => format!(
                "{} snapshot(s), {} to {}",
                p.snapshots,
                a.finished.format("%Y-%m-%d %H:%M:%S"),
                b.finished.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => "no snapshot yet".to_owned(),
        },
    }
}

fn state_text(s: Option<&PolicyStatus>) -> (String, &'static str) {
    match s {
        None => ("not scheduled by this daemon".to_owned(), "sub"),
        Some(s) if s.running => ("backing up now".to_owned(), "warn"),
        Some(s) if s.last_failure > s.last_success => (
            format!("last backup FAILED at {}", when(s.last_failure)),
            "bad",
        ),
        Some(s) => match s.last_success {
            Some(t) => (format!("last backup ok at {}", when(Some(t))), "ok"),
            None => ("no backup by this daemon yet".to_owned(), "sub"),
        },
    }
}

/// `/ui`: every policy, its state and what it can be recovered to, and its drills.
pub(super) fn overview(who: &Session, info: &Info, status: &DaemonStatus) -> String {
    let mut h = format!(
        "<h1>Overview</h1><p class=summary>{} polic{} &middot; daemon {} since {}</p>\
         <table id=policies><tr><th>Policy</th><th>Source</th><th>State</th><th>Recoverable</th><th>Objectives</th><th>Last drill</th></tr>",
        info.policies.len(),
        if info.policies.len() == 1 { "y" } else { "ies" },
        if status.active {
            "active"
        } else {
            "standing by"
        },
        when(status.started)
    );
    for p in &info.policies {
        let (state, class) = state_text(status.policies.get(&p.id));
        let last = p
            .drills
            .iter()
            .filter(|d| d.started.is_some())
            .max_by_key(|d| d.started);
        let _ = write!(
            h,
            "<tr><td><a href='/ui/policies/{id}'>{id}</a></td><td>{}</td><td class={class}>{}</td><td>{}</td><td>RPO {} &middot; RTO {}</td>{}</tr>",
            p.source,
            esc(&state),
            esc(&window_text(p)),
            human(p.rpo_seconds as f64),
            human(p.rto_seconds as f64),
            verdict_cell(last.and_then(|d| d.verdict)),
            id = esc(&p.id),
        );
    }
    h.push_str("</table>");
    if !info.groups.is_empty() {
        h.push_str(
            "<h2>Application groups</h2><table id=groups><tr><th>Group</th><th>Members</th><th>Newest group backup</th><th>Members within</th></tr>",
        );
        for g in &info.groups {
            let (last, within) = match (&g.error, &g.last_run) {
                (Some(e), _) => (format!("error: {e}"), String::new()),
                (None, None) => ("none yet".to_owned(), String::new()),
                (None, Some(r)) => (
                    format!("{} ({} ago)", r.run, human(r.age_seconds.max(0) as f64)),
                    format!(
                        "{:.1} s (max_skew {})",
                        r.skew_seconds,
                        human(g.max_skew_seconds)
                    ),
                ),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.id),
                esc(&g.members.join(", ")),
                esc(&last),
                esc(&within)
            );
        }
        h.push_str("</table>");
    }
    if !info.broken.is_empty() {
        h.push_str("<h2 class=bad>Configuration files that do not load</h2><ul>");
        for b in &info.broken {
            let _ = write!(
                h,
                "<li><code>{}</code>: {}</li>",
                esc(&b.file),
                esc(&b.errors.join("; "))
            );
        }
        h.push_str("</ul>");
    }
    frame(who, "Overview", &h)
}

/// `/ui/policies/ID`.
pub(super) fn policy(who: &Session, p: &PolicyInfo, s: Option<&PolicyStatus>) -> String {
    let (state, class) = state_text(s);
    let mut h = format!(
        "<h1>Policy {id}</h1><table><tr><th>Source</th><td>{}</td></tr><tr><th>State</th><td class={class}>{}</td></tr>\
         <tr><th>Recoverable</th><td>{}</td></tr><tr><th>Storage</th><td>{} <span class=sub>{}</span></td></tr>\
         <tr><th>Objectives</th><td>RPO {} &middot; RTO {}</td></tr>",
        p.source,
        esc(&state),
        esc(&window_text(p)),
        esc(&p.targets.join(", ")),
        esc(p.location.as_deref().unwrap_or("")),
        human(p.rpo_seconds as f64),
        human(p.rto_seconds as f64),
        id = esc(&p.id),
    );
    if let Some(e) = s.and_then(|s| s.last_error.as_deref()) {
        let _ = write!(
            h,
            "<tr><th>Last error</th><td class=bad>{}</td></tr>",
            esc(e)
        );
    }
    if let Some(e) = &p.error {
        let _ = write!(
            h,
            "<tr><th>Repository</th><td class=bad>{}</td></tr>",
            esc(e)
        );
    }
    h.push_str("</table><h2>Replicas</h2><table><tr><th>Target</th><th>Snapshots</th><th>Missing</th><th>Behind</th></tr>");
    for r in &p.replicas {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class={}>{}</td><td>{}</td></tr>",
            esc(&r.target),
            r.snapshots,
            if r.missing > 0 { "warn" } else { "ok" },
            r.missing,
            r.lag_seconds.map_or_else(
                || esc(r.error.as_deref().unwrap_or("?")),
                |l| human(l as f64)
            )
        );
    }
    h.push_str("</table><h2>Drills</h2><table><tr><th>Drill</th><th>Last verdict</th><th>Started</th><th>RTO</th><th>RPO</th></tr>");
    for d in &p.drills {
        let _ = write!(
            h,
            "<tr><td><a href='/ui/drills/{n}'>{n}</a></td>{}<td>{}</td><td>{}</td><td>{}</td></tr>",
            verdict_cell(d.verdict),
            when(d.started),
            d.rto_seconds.map_or("&mdash;".to_owned(), human),
            d.rpo_seconds.map_or("&mdash;".to_owned(), human),
            n = esc(&d.drill),
        );
    }
    h.push_str("</table>");
    frame(who, &format!("Policy {}", p.id), &h)
}

/// One drill's reports, oldest first.
fn of<'a>(all: &'a [Signed], drill: &str) -> Vec<&'a Signed> {
    all.iter().filter(|s| s.report.drill == drill).collect()
}

/// `/ui/drills`: every drill, its last verdict and its trend.
pub(super) fn drills(who: &Session, config: &Config, all: &[Signed]) -> String {
    let mut h = String::from(
        "<h1>Drills</h1><table id=drills><tr><th>Drill</th><th>Policy</th><th>Schedule</th><th>Last verdict</th><th>Last run</th><th>Passed / run</th></tr>",
    );
    for d in config.drills.values() {
        let mine = of(all, &d.name);
        let last = mine.last();
        let _ = write!(
            h,
            "<tr><td><a href='/ui/drills/{n}'>{n}</a></td><td>{}</td><td><code>{}</code></td>{}<td>{}</td><td>{} / {}</td></tr>",
            esc(d.policy.as_str()),
            esc(d.schedule.as_ref().map_or("on demand", |s| s.expr())),
            verdict_cell(last.map(|s| s.verdict())),
            when(last.map(|s| s.report.started)),
            mine.iter().filter(|s| s.verdict() == Verdict::Pass).count(),
            mine.len(),
            n = esc(&d.name),
        );
    }
    h.push_str("</table>");
    frame(who, "Drills", &h)
}

/// `/ui/drills/NAME`: the trend chart and every report.
pub(super) fn drill(who: &Session, def: &Drill, all: &[Signed]) -> String {
    let mine: Vec<Signed> = of(all, &def.name).into_iter().cloned().collect();
    let mut h = format!(
        "<h1>Drill {n}</h1><p>Restores policy <a href='/ui/policies/{p}'>{p}</a> &middot; schedule <code>{}</code> &middot; objectives RTO {} &middot; RPO {}</p><h2>Trend</h2>",
        esc(def.schedule.as_ref().map_or("on demand", |s| s.expr())),
        human(def.rto.as_secs_f64()),
        human(def.rpo.as_secs_f64()),
        n = esc(&def.name),
        p = esc(def.policy.as_str()),
    );
    let recent = &mine[mine.len().saturating_sub(30)..];
    h.push_str(&crate::drill::html::chart(recent));
    h.push_str("<h2>Reports</h2><table id=reports><tr><th>Started</th><th>Verdict</th><th>RTO</th><th>RPO</th><th>Region</th></tr>");
    for s in mine.iter().rev() {
        let r = &s.report;
        let _ = write!(
            h,
            "<tr><td><a href='/ui/reports/{id}'>{}</a></td>{}<td>{}</td><td>{}</td><td>{}</td></tr>",
            r.started.format("%Y-%m-%d %H:%M:%S UTC"),
            verdict_cell(Some(s.verdict())),
            r.rto.seconds.map_or("not measured".to_owned(), human),
            r.rpo.seconds.map_or("not measured".to_owned(), human),
            esc(&r.region),
            id = esc(&r.id),
        );
    }
    h.push_str("</table>");
    frame(who, &format!("Drill {}", def.name), &h)
}

/// `/ui/reports/ID`: the report page inside the console.
pub(super) fn report(who: &Session, s: &Signed, history: &[Signed]) -> String {
    frame(
        who,
        &format!("Report {}", s.report.id),
        &format!(
            "<p><a href='/ui/drills/{d}'>&larr; drill {d}</a> &middot; <a href='/v1/reports/{id}/html'>standalone page</a> (API token)</p>{}",
            crate::drill::html::body(s, history),
            d = esc(&s.report.drill),
            id = esc(&s.report.id),
        ),
    )
}

/// `/ui/audit`.
pub(super) fn audit(
    who: &Session,
    events: &[crate::audit::Event],
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> String {
    let v = |t: Option<DateTime<Utc>>| {
        t.map_or(String::new(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    let h = format!(
        "<h1>Audit log</h1><form method=get action=/ui/audit><label>From <input name=since value='{}'></label> \
         <label>until <input name=until value='{}'></label> <button type=submit>Show</button> <span class=sub>dates or times, UTC</span></form>\
         <p class=summary>{} event(s), newest first</p>{}",
        esc(&v(since)),
        esc(&v(until)),
        events.len(),
        crate::evidence::audit_table(events.iter().rev())
    );
    frame(who, "Audit log", &h)
}

/// `/ui/evidence`: the export form (a GET: the download is read-only too).
pub(super) fn evidence(who: &Session, config: &Config) -> String {
    let today = Utc::now().date_naive();
    let mut options = String::from("<option value=''>every policy</option>");
    for p in config.policies.keys() {
        let _ = write!(options, "<option>{}</option>", esc(p.as_str()));
    }
    frame(
        who,
        "Evidence",
        &format!(
            "<h1>Evidence export</h1><p>A bundle of a period's drill evidence: every signed report and its page, \
             per-policy history with charts and missed drills, the audit events, the signer keys, \
             <code>SHA256SUMS</code> and <code>VERIFY.md</code>, whose OpenSSL commands check every signature without dr. \
             The same as <code>dr evidence export</code>.</p>\
             <form method=get action=/ui/evidence/bundle.tar.gz id=export>\
             <p><label>From <input name=from value='{}'></label> <label>to <input name=to value='{}'></label> \
             <label>Policy <select name=policy>{options}</select></label></p>\
             <p><button type=submit id=download>Download .tar.gz</button></p></form>",
            today - chrono::Duration::days(90),
            today
        ),
    )
}
