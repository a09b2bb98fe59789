//! Object Lock and storage-class tiers against moto (which implements both) and Garage (which
//! ignores storage classes): writes carry retention, a locked version cannot be deleted,
//! retention moves old packs to their tier's class keeping the lock, and Garage is skipped
//! with a clear reason.

use aws_sdk_s3::types::{ObjectLockMode, StorageClass};

use crate::harness::dr::DrEnv;
use crate::harness::{garage, moto, rt, tree};

fn policy(env: &DrEnv, data: &std::path::Path, target: &str) {
    env.policy(
        "app",
        &format!(
            "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"{target}\"]\n\
             [retention]\nkeep_last = 5\ndaily = 0\nweekly = 0\nmonthly = 0\n\
             [[retention.tier]]\nafter = \"0s\"\nstorage_class = \"STANDARD_IA\"\n",
            data.display()
        ),
    );
}

#[test]
fn object_lock_and_tiers_on_moto() {
    let m = moto::shared();
    let mut env = DrEnv::new();
    let bucket = m.s3.bucket("locked", true);
    env.add_storage(
        &format!(
            "{}lock = {{ mode = \"governance\", days = 1 }}\n",
            m.s3.storage_toml("moto", &bucket)
        ),
        m.s3.env("moto"),
    );
    let data = env.path("data");
    tree::make(&data, 2);
    policy(&env, &data, "moto");
    env.ok(&["backup", "--policy", "app"]);

    let c = m.s3.client();
    let rt = rt();
    let packs: Vec<String> = rt.block_on(async {
        c.list_objects_v2()
            .bucket(&bucket)
            .prefix("dr/packs/")
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_owned())
            .collect()
    });
    assert!(!packs.is_empty());
    let now = chrono::Utc::now().timestamp();
    for key in &packs {
        let h = rt
            .block_on(c.head_object().bucket(&bucket).key(key).send())
            .unwrap();
        assert_eq!(
            h.object_lock_mode(),
            Some(&ObjectLockMode::Governance),
            "{key}"
        );
        let until = h.object_lock_retain_until_date().unwrap().secs();
        assert!(
            (now + 23 * 3600..now + 25 * 3600).contains(&until),
            "{key} locked until {until}"
        );
    }
    // The locked version itself cannot be deleted.
    let version = rt.block_on(async {
        c.list_object_versions()
            .bucket(&bucket)
            .prefix(&packs[0])
            .send()
            .await
            .unwrap()
            .versions()[0]
            .version_id()
            .unwrap()
            .to_owned()
    });
    let refused = rt.block_on(
        c.delete_object()
            .bucket(&bucket)
            .key(&packs[0])
            .version_id(&version)
            .send(),
    );
    assert!(
        refused.is_err(),
        "deleting a locked version must be refused"
    );

    // Retention moves the packs of kept snapshots to the tier's class; the lock stays.
    let out = env.json(&["retention", "apply"]);
    let tiers = &out["tiers"][0];
    assert_eq!(tiers["moved"].as_u64(), Some(packs.len() as u64), "{out:#}");
    for key in &packs {
        let h = rt
            .block_on(c.head_object().bucket(&bucket).key(key).send())
            .unwrap();
        assert_eq!(h.storage_class(), Some(&StorageClass::StandardIa), "{key}");
        assert_eq!(
            h.object_lock_mode(),
            Some(&ObjectLockMode::Governance),
            "{key}"
        );
    }
    let again = env.json(&["retention", "apply"]);
    assert_eq!(
        again["tiers"][0]["moved"], 0,
        "applying twice moves nothing"
    );
    // The data still restores exactly.
    assert!(
        env.ok(&["verify", "--policy", "app", "--data"])
            .contains("OK")
    );
}

#[test]
fn tiers_are_skipped_with_a_reason_where_classes_are_ignored() {
    let g = garage::shared();
    let mut env = DrEnv::new();
    env.add_storage(
        &g.s3.storage_toml("garage", &g.bucket("tiers")),
        g.s3.env("garage"),
    );
    let data = env.path("data");
    tree::make(&data, 1);
    policy(&env, &data, "garage");
    env.ok(&["backup", "--policy", "app"]);
    let out = env.json(&["retention", "apply"]);
    let skipped = out["tiers"][0]["skipped"].as_str().unwrap_or_default();
    assert!(
        skipped.contains("does not honour storage classes"),
        "{out:#}"
    );
    assert_eq!(out["tiers"][0]["moved"], 0);
}
