//! The bundle's pages: the period at a glance, one page per policy (history, chart, missed
//! drills, every report), the audit log. Links are relative, so the bundle reads from disk.

use std::fmt::Write;

use super::{Entry, Manifest};
use crate::drill::report::Verdict;
use crate::html::{Mark, esc, human, page};

fn period(m: &Manifest) -> String {
    format!(
        "{} &ndash; {} UTC",
        m.from.format("%Y-%m-%d %H:%M"),
        m.to.format("%Y-%m-%d %H:%M")
    )
}

fn verdict_cell(v: Verdict) -> String {
    format!(
        "<td class=verdict-{}>{}</td>",
        v.as_str(),
        v.as_str().to_uppercase()
    )
}

fn objective(seconds: Option<f64>, objective: f64, met: bool) -> String {
    match seconds {
        None => "<span class=bad>not measured</span>".to_owned(),
        Some(s) => format!(
            "<span class={}>{}</span> <span class=sub>/ {}</span>",
            if met { "ok" } else { "bad" },
            human(s),
            human(objective)
        ),
    }
}

/// The class of a count of failures: red when there is any.
fn bad_if(n: usize) -> &'static str {
    if n > 0 { "bad" } else { "ok" }
}

/// Counts of a policy's reports and missed runs.
struct Tally {
    passed: usize,
    failed: usize,
    missed: usize,
}

fn tally(m: &Manifest, policy: &str) -> Tally {
    let mine = || m.reports.iter().filter(|r| r.policy == policy);
    let drills: Vec<&str> = m
        .drills
        .iter()
        .filter(|d| d.policy == policy)
        .map(|d| d.name.as_str())
        .collect();
    Tally {
        passed: mine().filter(|r| r.verdict == Verdict::Pass).count(),
        failed: mine().filter(|r| r.verdict != Verdict::Pass).count(),
        missed: m
            .missed
            .iter()
            .filter(|g| drills.contains(&g.drill.as_str()))
            .map(|g| g.runs)
            .sum(),
    }
}

/// `index.html`.
pub(super) fn index(m: &Manifest) -> String {
    let mut h = format!(
        "<h1>Restore drill evidence</h1><p class=summary>Period {}. {} trusted drill report(s), \
         {} report(s) that are not evidence, {} missed scheduled run(s), {} audit event(s).</p>\
         <p class=sub>Exported by dr {} on {} from host <code>{}</code>. How to check every signature \
         without dr: <a href=VERIFY.md>VERIFY.md</a>. Machine-readable: <a href=bundle.json>bundle.json</a>.</p>\
         <h2>Policies</h2><table><tr><th>Policy</th><th>Passed</th><th>Failed</th><th>Missed runs</th></tr>",
        period(m),
        m.reports.len(),
        m.untrusted.len(),
        m.missed.iter().map(|g| g.runs).sum::<usize>(),
        m.audit_events,
        esc(m.dr_version),
        m.generated.format("%Y-%m-%d %H:%M UTC"),
        esc(&m.host),
    );
    for p in &m.policies {
        let t = tally(m, p);
        let _ = write!(
            h,
            "<tr><td><a href='policies/{p}/index.html'>{p}</a></td><td class=ok>{}</td><td class={}>{}</td><td class={}>{}</td></tr>",
            t.passed,
            bad_if(t.failed),
            t.failed,
            bad_if(t.missed),
            t.missed,
            p = esc(p),
        );
    }
    h.push_str("</table><p><a href=audit/index.html>The audit log of the period</a></p>");
    page("Restore drill evidence", &h)
}

fn chart(reports: &[&Entry]) -> String {
    if reports.len() < 2 {
        return "<p class=sub>The chart appears once there are two drills in the period.</p>"
            .to_owned();
    }
    let mark = |r: &Entry| match r.verdict {
        Verdict::Pass => Mark::Pass,
        Verdict::Fail => Mark::Fail,
        Verdict::Untrusted => Mark::Untrusted,
    };
    let rto: Vec<_> = reports.iter().map(|r| (r.rto_seconds, mark(r))).collect();
    let rpo: Vec<_> = reports.iter().map(|r| (r.rpo_seconds, mark(r))).collect();
    let last = reports[reports.len() - 1];
    format!(
        "<div class=charts>{}{}</div><p class=sub>Oldest left, newest right ({} drills). Dots: \
         <span class=ok>passed</span> / <span class=bad>failed</span>; dashed: the objective.</p>",
        crate::html::panel(
            &rto,
            last.rto_objective_seconds,
            "Recovery time (RTO)",
            "#1f6feb"
        ),
        crate::html::panel(
            &rpo,
            last.rpo_objective_seconds,
            "Recovery point (RPO)",
            "#b35900"
        ),
        reports.len()
    )
}

/// `policies/<policy>/index.html`.
pub(super) fn policy(m: &Manifest, policy: &str) -> String {
    let reports: Vec<&Entry> = m.reports.iter().filter(|r| r.policy == policy).collect();
    let drills: Vec<_> = m.drills.iter().filter(|d| d.policy == policy).collect();
    let t = tally(m, policy);
    let mut h = format!(
        "<p><a href=../../index.html>&larr; all policies</a></p><h1>Policy {p}: restore drills</h1>\
         <p class=summary>Period {}: <b class=ok>{} passed</b>, <b class={}>{} failed</b>, \
         <b class={}>{} scheduled run(s) missed</b>.</p><h2>Drills</h2><table><tr><th>Drill</th><th>Schedule</th><th>RTO objective</th><th>RPO objective</th></tr>",
        period(m),
        t.passed,
        bad_if(t.failed),
        t.failed,
        bad_if(t.missed),
        t.missed,
        p = esc(policy),
    );
    for d in &drills {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&d.name),
            esc(d.schedule.as_deref().unwrap_or("on demand only")),
            human(d.rto_objective_seconds),
            human(d.rpo_objective_seconds)
        );
    }
    h.push_str("</table><h2>Recovery time and point over the period</h2>");
    h.push_str(&chart(&reports));
    h.push_str("<h2>Missed drills</h2>");
    let gaps: Vec<_> = m
        .missed
        .iter()
        .filter(|g| drills.iter().any(|d| d.name == g.drill))
        .collect();
    if gaps.is_empty() {
        h.push_str("<p class=ok>Every scheduled drill of the period ran.</p>");
    } else {
        h.push_str("<table><tr><th>Drill</th><th>Scheduled runs that did not happen</th><th>From</th><th>To</th></tr>");
        for g in gaps {
            let _ = write!(
                h,
                "<tr class=missed><td class=bad>{}</td><td class=bad>{}{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.drill),
                g.runs,
                if g.truncated {
                    " (and more: the period has too many scheduled runs to list)"
                } else {
                    ""
                },
                g.first.format("%Y-%m-%d %H:%M UTC"),
                g.last.format("%Y-%m-%d %H:%M UTC"),
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<p class=sub>A scheduled run counts as done when a report of its drill started between \
         its scheduled time (less a minute) and the next one. Schedules are the drill definitions \
         as configured at the export.</p><h2>Every drill of the period</h2>\
         <table><tr><th>Started</th><th>Drill</th><th>Verdict</th><th>RTO / objective</th><th>RPO / objective</th><th>Region</th><th>Report</th></tr>",
    );
    for r in reports.iter().rev() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}{}</td><td><a href='../../{html}'>page</a> &middot; <a href='../../{json}'>signed JSON</a></td></tr>",
            r.started.format("%Y-%m-%d %H:%M UTC"),
            esc(&r.drill),
            verdict_cell(r.verdict),
            objective(r.rto_seconds, r.rto_objective_seconds, r.rto_met),
            objective(r.rpo_seconds, r.rpo_objective_seconds, r.rpo_met),
            esc(&r.region),
            r.region_role
                .as_deref()
                .map(|role| format!(" <span class=sub>({})</span>", esc(role)))
                .unwrap_or_default(),
            html = esc(&r.html),
            json = esc(&r.json),
        );
    }
    h.push_str("</table>");
    let excluded: Vec<_> = m.untrusted.iter().filter(|x| x.policy == policy).collect();
    if !excluded.is_empty() {
        h.push_str("<h2>Not evidence</h2><p class=warn>These reports of the period are not validly signed by a trusted key; they count for nothing, whatever they claim.</p><ul>");
        for x in excluded {
            let _ = write!(
                h,
                "<li><a href='../../{}'>{}</a> (claims {})</li>",
                esc(&x.signed),
                esc(&x.id),
                x.claimed_verdict.as_str().to_uppercase()
            );
        }
        h.push_str("</ul>");
    }
    page(&format!("Restore drills of {policy}"), &h)
}

/// `audit/index.html`.
pub(super) fn audit(m: &Manifest, events: &[crate::audit::Event]) -> String {
    let h = format!(
        "<p><a href=../index.html>&larr; the bundle</a></p><h1>Audit log</h1><p class=summary>{} event(s), {}. \
         The same as data: <a href=events.jsonl>events.jsonl</a>.</p>\
         {}",
        events.len(),
        period(m),
        audit_table(events.iter())
    );
    page("Audit log", &h)
}

/// Audit events as a table (`id=audit`), in the order given; the web console shows the same.
pub(crate) fn audit_table<'a>(events: impl Iterator<Item = &'a crate::audit::Event>) -> String {
    let mut h = String::from(
        "<table id=audit><tr><th>Time (UTC)</th><th>Who</th><th>Via</th><th>Action</th><th>Target</th><th>Result</th></tr>",
    );
    for e in events {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}<div class=sub>{}</div></td><td>{}</td><td>{}</td><td>{}</td><td class={}>{}</td></tr>",
            e.time.format("%Y-%m-%d %H:%M:%S"),
            esc(&e.who),
            esc(&e.host),
            esc(&e.via),
            esc(&e.action),
            esc(&e.target),
            if e.result == "ok" { "ok" } else { "bad" },
            esc(&e.result)
        );
    }
    h.push_str("</table>");
    h
}
