//! A Qdrant drill: each restored collection loaded into a scratch collection of the sandbox
//! server (dropped afterwards), its point count and the searches recorded at backup checked.

use std::time::Instant;

use super::super::{DrillError, Run};
use crate::config::SourceSpec;
use crate::drill::sandbox::Sandbox;
use crate::restore;
use crate::source::qdrant::load::{Target, check_samples, compatible, restore_collection};
use crate::source::qdrant::{Client, QdrantFacts};

/// Loads each restored collection into a scratch collection of the sandbox server, checks
/// its point count and the searches recorded at backup.
pub(in crate::drill) async fn check(
    run: &mut Run<'_>,
    sb: &mut Sandbox,
    q: &restore::qdrant::Restored,
) -> Result<(), DrillError> {
    let SourceSpec::Qdrant(spec) = &run.policy.source else {
        unreachable!("a Qdrant restore is of a qdrant policy")
    };
    let QdrantFacts {
        qdrant_version: version,
        collections: facts,
        ..
    } = restore::qdrant::facts(&q.files.manifest)?;
    run.versions
        .insert("qdrant (backed up)".to_owned(), version.clone());
    let url = run
        .drill
        .qdrant_url
        .clone()
        .ok_or_else(|| DrillError::Usage("sandbox.qdrant_url is not set".to_owned()))?;
    let key = spec
        .api_key
        .as_ref()
        .map(|k| k.read().map_err(|e| DrillError::Usage(e.to_string())))
        .transpose()?;
    let client = Client::new(&url, key, std::time::Duration::from_secs(3600))?;
    let server = client.version().await?;
    run.versions
        .insert("qdrant (sandbox)".to_owned(), server.clone());
    if let Err(e) = compatible(&version, &server) {
        run.builtin(
            "sandbox server can load the snapshot",
            &format!("Qdrant {version} or one minor newer"),
            e,
            false,
            0.0,
        );
        return Ok(());
    }
    let base = format!(
        "dr_drill_{}_{}",
        run.drill.name.replace('-', "_"),
        run.started.format("%Y%m%d%H%M%S")
    );
    let t = Instant::now();
    let mut loaded = Vec::new();
    let into = Target::single(client.clone());
    for f in &facts {
        let target = format!("{base}_{}", f.name);
        sb.own_qdrant_collection(client.clone(), target.clone());
        let tc = Instant::now();
        let r = restore_collection(&into, &q.dir, &target, f).await;
        if let Ok(n) = &r {
            run.points.insert(f.name.clone(), *n);
        }
        let (ok, actual) = match &r {
            Ok(n) => (true, format!("{n} points in scratch collection {target}")),
            Err(e) => (false, e.to_string()),
        };
        run.builtin(
            &format!("collection {}: point count matches the backup", f.name),
            &format!("{} points (recorded at backup)", f.points),
            actual,
            ok,
            tc.elapsed().as_secs_f64(),
        );
        if ok {
            loaded.push((f, target));
        }
    }
    run.phase("recovery", t);
    let t = Instant::now();
    for (f, target) in loaded {
        let tc = Instant::now();
        let results = check_samples(&client, &target, &f.samples).await;
        let ok = results.iter().all(|r| r.0);
        let detail = results
            .iter()
            .map(|r| r.1.clone())
            .collect::<Vec<_>>()
            .join("; ");
        run.builtin(
            &format!(
                "collection {}: recorded searches return the same ids",
                f.name
            ),
            &format!("{} searches recorded at backup", f.samples.len()),
            if detail.is_empty() {
                "no points to search".to_owned()
            } else {
                detail
            },
            ok,
            tc.elapsed().as_secs_f64(),
        );
    }
    sb.drop_qdrant_collections().await;
    run.phase("checks", t);
    Ok(())
}
