//! The storage conformance suite against real S3 implementations, and the capability probe.

use crate::harness::{garage, moto, rt};

#[test]
fn garage_conforms_and_reports_what_it_ignores() {
    let g = garage::shared();
    let bucket = g.bucket("conf");
    rt().block_on(async {
        let s = dr::storage::Storage::open("garage", &g.s3.target(&bucket))
            .await
            .unwrap();
        dr::storage::conformance::run(&s).await;
        let caps = s.probe().await.unwrap();
        // Garage answers 501 to versioning/Object Lock and ignores If-None-Match and classes.
        assert!(
            !caps.object_lock
                && !caps.versioning
                && !caps.conditional_writes
                && !caps.storage_classes,
            "{caps:?}"
        );
    });
}

#[test]
fn moto_conforms_and_reports_its_features() {
    let m = moto::shared();
    let plain = m.s3.bucket("conf", false);
    let locked = m.s3.bucket("locked", true);
    rt().block_on(async {
        let s = dr::storage::Storage::open("moto", &m.s3.target(&plain))
            .await
            .unwrap();
        dr::storage::conformance::run(&s).await;
        let caps = s.probe().await.unwrap();
        assert!(
            caps.conditional_writes && caps.storage_classes && !caps.object_lock,
            "{caps:?}"
        );
        let s = dr::storage::Storage::open("moto-locked", &m.s3.target(&locked))
            .await
            .unwrap();
        let caps = s.probe().await.unwrap();
        assert!(caps.object_lock, "{caps:?}");
    });
    let versioned = m.s3.bucket("versioned", false);
    let c = m.s3.client();
    rt().block_on(async {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        c.put_bucket_versioning()
            .bucket(&versioned)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let s = dr::storage::Storage::open("moto-versioned", &m.s3.target(&versioned))
            .await
            .unwrap();
        assert!(s.probe().await.unwrap().versioning);
    });
}
