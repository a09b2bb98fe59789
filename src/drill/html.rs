//! The drill report as a page a non-engineer can read: the verdict first, then recovery time
//! and data loss against the objectives in plain words, what was restored from where, every
//! check, the timings, the controls it evidences, the signature, and a chart of the last
//! drills. One self-contained HTML file (inline CSS and SVG, no scripts).

use std::fmt::Write;

use super::report::{Objective, Signed, Verdict};
use crate::html::{Mark, esc, human};

fn objective_row(title: &str, plain: &str, o: &Objective) -> String {
    // Not measured is one failure (the drill did not get that far), not also a missed objective.
    let (class, said) = match o.seconds {
        None => (
            "bad",
            format!(
                "<b>not measured</b> &mdash; the drill did not get that far (objective: {})",
                human(o.objective_seconds)
            ),
        ),
        Some(s) if o.met => (
            "ok",
            format!(
                "<b>{}</b> &mdash; within the objective of {}",
                human(s),
                human(o.objective_seconds)
            ),
        ),
        Some(s) => (
            "bad",
            format!(
                "<b>{}</b> &mdash; NOT within the objective of {}",
                human(s),
                human(o.objective_seconds)
            ),
        ),
    };
    format!(
        "<tr><th>{title}<div class=sub>{plain}</div></th><td class={class}>{said}</td><td class=sub>{}</td></tr>",
        esc(&o.basis)
    )
}

/// Whether the data came back (the built-in restore check passed), whatever later checks said.
fn restored(r: &super::report::Report) -> bool {
    r.checks
        .first()
        .is_some_and(|c| c.kind == "builtin" && c.passed)
}

/// How a report is drawn in a chart.
pub(crate) fn mark(s: &Signed) -> Mark {
    match s.verdict() {
        Verdict::Pass => Mark::Pass,
        Verdict::Fail => Mark::Fail,
        Verdict::Untrusted => Mark::Untrusted,
    }
}

/// One panel: a measure over `history` (oldest first) against its objective (the newest's).
fn panel(
    history: &[Signed],
    title: &str,
    color: &str,
    measure: fn(&Signed) -> (Option<f64>, f64),
) -> String {
    let points: Vec<(Option<f64>, Mark)> =
        history.iter().map(|s| (measure(s).0, mark(s))).collect();
    let objective = measure(&history[history.len() - 1]).1;
    crate::html::panel(&points, objective, title, color)
}

/// RTO and RPO over the last drills, each against its objective.
pub(crate) fn chart(history: &[Signed]) -> String {
    if history.len() < 2 {
        return "<p class=sub>The chart appears once there are two drills.</p>".to_owned();
    }
    format!(
        "<div class=charts>{}{}</div><p class=sub>Oldest left, newest right ({} drills). Dots: \
         <span class=ok>passed</span> / <span class=bad>failed</span> / <span class=warn>untrusted</span>; dashed: the objective.</p>",
        panel(history, "Recovery time (RTO)", "#1f6feb", |s| (
            s.report.rto.seconds,
            s.report.rto.objective_seconds
        )),
        panel(history, "Recovery point (RPO)", "#b35900", |s| (
            s.report.rpo.seconds,
            s.report.rpo.objective_seconds
        )),
        history.len()
    )
}

/// Renders `s` with the chart over `history` (oldest first, including `s`). A report that
/// is not trusted ([`Signed::trusted`]) says so in the title and the banner instead of its
/// verdict.
pub fn render(s: &Signed, history: &[Signed]) -> String {
    let title = format!(
        "Restore drill {}: {}",
        s.report.drill,
        match s.verdict() {
            Verdict::Pass => "PASSED",
            Verdict::Fail => "FAILED",
            Verdict::Untrusted => "UNTRUSTED",
        }
    );
    crate::html::page(&title, &body(s, history))
}

/// The page's body, for [`render`] and the web console.
pub fn body(s: &Signed, history: &[Signed]) -> String {
    let r = &s.report;
    let verdict = s.verdict();
    let pass = verdict == Verdict::Pass;
    let trusted = s.trusted;
    let mut h = String::new();
    let _ = write!(
        h,
        "<div class='banner {}'><h1>{} &mdash; restore drill {}</h1><p>{} backup of <b>{}</b> restored from region <b>{}</b> on {} UTC</p></div>",
        verdict.as_str(),
        match verdict {
            Verdict::Pass => "&#10004; PASSED",
            Verdict::Fail => "&#10008; FAILED",
            Verdict::Untrusted => "&#9888; UNTRUSTED",
        },
        esc(&r.drill),
        esc(&r.source),
        esc(&r.policy),
        esc(&r.region),
        r.started.format("%Y-%m-%d %H:%M")
    );
    if verdict == Verdict::Untrusted {
        let _ = write!(
            h,
            "<p class='summary warn'><b>This report is not evidence.</b> {} Whatever it says below              (it claims <b>{}</b>) may be invented: it does not count as a drill, passed or failed.</p>",
            if s.signature_valid {
                "It is signed by a key that is not one of this installation's trusted signers (keys.trusted_signers)."
            } else {
                "Its signature does not match: it was changed after it was signed."
            },
            esc(&r.verdict.as_str().to_uppercase())
        );
    }
    let _ = write!(
        h,
        "<p class=summary>{}</p>",
        match (r.rto.seconds, r.rpo.seconds) {
            _ if verdict == Verdict::Untrusted => "In plain words: this page proves nothing about restores; run a drill with `dr drill run` to get a report signed by a trusted key.".to_owned(),
            (Some(t), Some(p)) if pass => format!(
                "In plain words: restoring this service from backup works. In this test it was back in <b>{}</b>, and an outage at that moment would have lost at most the last <b>{}</b> of data.",
                human(t),
                human(p)
            ),
            (Some(t), Some(p)) => format!(
                "In plain words: the restore did not meet its objectives. It took <b>{}</b>, and an outage would have lost up to <b>{}</b> of data. The reasons are listed below.",
                human(t),
                human(p)
            ),
            _ if restored(r) => format!(
                "In plain words: the backup was restored, but {} of {} checks of the restored service failed, so this test does not show a working recovery. The reasons are listed below.",
                r.checks.iter().filter(|c| !c.passed).count(),
                r.checks.len()
            ),
            _ => "In plain words: this backup could <b>not</b> be restored in this test. The reasons are listed below; until they are fixed, a real recovery would fail the same way.".to_owned(),
        }
    );
    if !r.reasons.is_empty() {
        h.push_str("<h2>Why it failed</h2><ul>");
        for reason in &r.reasons {
            let _ = write!(h, "<li class=bad>{}</li>", esc(reason));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Recovery objectives</h2><table>");
    h.push_str(&objective_row(
        "Recovery time (RTO)",
        "how long it took to have the service back",
        &r.rto,
    ));
    h.push_str(&objective_row(
        "Recovery point (RPO)",
        "how much recent data an outage now would lose",
        &r.rpo,
    ));
    h.push_str("</table>");
    if r.region_role.as_deref() == Some("primary") {
        let _ = write!(
            h,
            "<p class=warn>Restored from <b>{}</b>, the policy's primary storage: this shows that backups restore, not that they survive the loss of that region. A drill with <code>from_region</code> set to a replica shows that.</p>",
            esc(&r.region)
        );
    }
    h.push_str("<h2>What was restored</h2><table>");
    let rows = [
        (
            "Snapshot",
            r.snapshot.clone().unwrap_or_else(|| "none".to_owned()),
        ),
        (
            "Snapshot taken",
            r.snapshot_time.map_or("?".to_owned(), |t| {
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            }),
        ),
        ("Point asked for", r.target.clone()),
        (
            "Point reached",
            r.reached
                .clone()
                .unwrap_or_else(|| "not reached".to_owned()),
        ),
        (
            "Region",
            match r.region_role.as_deref() {
                Some(role) => format!("{} (the policy's {role})", r.region),
                None => r.region.clone(),
            },
        ),
        ("Repository", r.repository.clone()),
        (
            "Data restored",
            crate::config::units::format_bytes(r.bytes_restored),
        ),
        ("Ran on", r.host.clone()),
        (
            "Started by",
            r.trigger
                .as_ref()
                .map_or("not recorded".to_owned(), |t| match t.by.as_str() {
                    "schedule" => "its schedule (the dr daemon)".to_owned(),
                    "api" => format!("API token {}", t.actor),
                    _ => format!("{} on the command line", t.actor),
                }),
        ),
        (
            "Drill definition",
            format!(
                "restore-drills/{}.toml{}",
                r.drill,
                r.definition_sha256
                    .as_ref()
                    .map(|h| format!(", SHA-256 {h}"))
                    .unwrap_or_default()
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    for (k, v) in &r.versions {
        let _ = write!(
            h,
            "<tr><th>Version: {}</th><td>{}</td></tr>",
            esc(k),
            esc(v)
        );
    }
    h.push_str("</table>");
    if !r.members.is_empty() {
        let _ = write!(
            h,
            "<h2>Members of group {}</h2><p class=sub>Every member was restored to one point; skew is each member's distance from it.</p><table><tr><th>Member</th><th>Restored to</th><th>Point reached</th><th>Skew</th></tr>",
            esc(r.group.as_deref().unwrap_or_default())
        );
        for m in &r.members {
            let _ = write!(
                h,
                "<tr><td class={cls}>{mark} {name}<div class=sub>{source}, from {region}</div></td><td>{target}</td><td>{reached}</td><td>{skew}</td></tr>",
                cls = if m.passed { "ok" } else { "bad" },
                mark = if m.passed { "&#10004;" } else { "&#10008;" },
                name = esc(&m.policy),
                source = esc(&m.source),
                region = esc(&m.region),
                target = esc(&m.target),
                reached = esc(m.reached.as_deref().unwrap_or("not reached")),
                skew = m
                    .skew_seconds
                    .map_or("?".to_owned(), |s| format!("{s:.1} s")),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Checks</h2><table><tr><th>Check</th><th>Expected</th><th>Found</th></tr>");
    for c in &r.checks {
        let _ = write!(
            h,
            "<tr><td class={cls}>{mark} {name}<div class=sub>{kind}</div></td><td>{exp}</td><td>{act}</td></tr>",
            cls = if c.passed { "ok" } else { "bad" },
            mark = if c.passed { "&#10004;" } else { "&#10008;" },
            name = esc(&c.name),
            kind = esc(&c.kind),
            exp = esc(&c.expected),
            act = esc(&c.actual)
        );
    }
    h.push_str("</table><h2>Timings</h2><table>");
    // Every step, then their sum; `total` is the RTO window, which ends before teardown.
    let steps: Vec<(&String, &f64)> = r.timings.iter().filter(|(k, _)| *k != "total").collect();
    for (k, v) in &steps {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), human(**v));
    }
    let sum: f64 = steps.iter().map(|(_, v)| **v).sum();
    let _ = write!(h, "<tr><th>all steps</th><td>{}</td></tr>", human(sum));
    if let Some(t) = r.timings.get("total") {
        let _ = write!(
            h,
            "<tr><th>recovery time (RTO)<div class=sub>from the drill's start until every check passed: the steps before teardown</div></th><td>{}</td></tr>",
            human(*t)
        );
    }
    h.push_str("</table><h2>Recent drills</h2>");
    h.push_str(&chart(history));
    h.push_str("<h2>Controls this evidences</h2><table>");
    for (id, what) in &r.controls {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(id), esc(what));
    }
    let _ = write!(
        h,
        "</table><h2>Authenticity</h2><p class={class}>{said}</p><p class=sub>Report <code>{id}</code>, schema <code>{schema}</code>, \
         signer key <code>{signer}</code>. What is signed is the JSON report stored as <code>drills/{drill}/{id}.json</code> in the \
         repository, not this page: <code>dr drill show {id} --raw &gt; report.signed</code> gives that file, and \
         <code>dr drill verify-report report.signed</code> checks it.</p>",
        class = if s.signature_valid && trusted {
            "ok"
        } else {
            "bad"
        },
        said = match (s.signature_valid, trusted) {
            (true, true) =>
                "&#10004; The JSON report this page shows is signed with Ed25519 by a trusted key, and has not been changed since.",
            (true, false) =>
                "&#9888; Validly signed, but by a key that is not in keys.trusted_signers.",
            _ =>
                "&#10008; The signature does not match: this report was changed after it was signed.",
        },
        id = esc(&r.id),
        schema = esc(&r.schema),
        signer = esc(&s.signer),
        drill = esc(&r.drill),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::report::{Report, Signed};

    /// The documented example report.
    fn example() -> Report {
        serde_json::from_str(include_str!("../../docs/drill-report.example.json")).unwrap()
    }

    /// `r` as if validly signed by a trusted key.
    fn trusted(r: Report) -> Signed {
        Signed {
            report: r,
            signer: "ab".repeat(32),
            signature_valid: true,
            signer_trusted: true,
            trusted: true,
            raw: Vec::new(),
        }
    }

    #[test]
    fn failed_report_leads_with_the_verdict_and_escapes_everything() {
        let mut r = example();
        r.verdict = crate::drill::report::Outcome::Fail;
        r.reasons = vec!["check `<script>`: expected value >= 1000, got 3".to_owned()];
        let s = trusted(r);
        let html = render(&s, std::slice::from_ref(&s));
        assert!(html.find("FAILED").unwrap() < html.find("Recovery objectives").unwrap());
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("ISO/IEC 27001:2022 A.8.13"));
    }

    /// Issue 20, item 2: a failed check is not a failed restore, "not measured" is one
    /// failure, the timings add up, and the page says what is signed and how to check it.
    #[test]
    fn a_failed_check_after_a_good_restore_is_told_apart_and_timings_add_up() {
        let mut r = example();
        r.verdict = crate::drill::report::Outcome::Fail;
        r.checks[3].passed = false;
        r.rto.seconds = None;
        r.rto.met = false;
        let s = trusted(r);
        let html = render(&s, std::slice::from_ref(&s));
        assert!(
            html.contains("the backup was restored, but 1 of 4 checks"),
            "{html}"
        );
        assert!(!html.contains("could <b>not</b> be restored"));
        let rto_row = &html[html.find("Recovery time (RTO)<div").unwrap()..];
        let rto_row = &rto_row[..rto_row.find("</tr>").unwrap()];
        assert!(
            rto_row.contains("not measured") && !rto_row.contains("NOT within"),
            "{rto_row}"
        );
        // restore 0.87 + recovery 0.95 + checks 0.09 + teardown 0.13 = 2.0 s; RTO 1.98 s.
        assert!(
            html.contains("<tr><th>all steps</th><td>2.0 s</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("recovery time (RTO)<div class=sub>"),
            "{html}"
        );
        assert!(!html.contains("<th>total</th>"));
        assert!(html.contains(&format!("dr drill show {} --raw", s.report.id)));
        assert!(
            html.contains("API token ops-bot") || html.contains("its schedule"),
            "{html}"
        );
        assert!(
            !html.contains("the policy's primary storage"),
            "the example restores from a replica"
        );
        let mut primary = s.clone();
        primary.report.region_role = Some("primary".to_owned());
        let html = render(&primary, std::slice::from_ref(&primary));
        assert!(html.contains("the policy's primary storage"), "{html}");
        assert!(html.contains(&format!("drills/{}/{}.json", s.report.drill, s.report.id)));
    }

    #[test]
    fn untrusted_report_never_reads_as_passed() {
        let r = example();
        assert_eq!(r.verdict, crate::drill::report::Outcome::Pass);
        let s = Signed {
            signer: "cd".repeat(32),
            signer_trusted: false,
            trusted: false,
            ..trusted(r)
        };
        let html = render(&s, std::slice::from_ref(&s));
        assert!(!html.contains("PASSED"), "{html}");
        let title = &html[..html.find("</title>").unwrap()];
        assert!(title.ends_with("UNTRUSTED"), "{title}");
        assert!(html.find("UNTRUSTED").unwrap() < html.find("Recovery objectives").unwrap());
        assert!(html.contains("not evidence"));
    }
}
