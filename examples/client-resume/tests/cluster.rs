//! The `--cluster` flow: kill the client's node mid-stream; the client resumes on the other
//! node with nothing lost and nothing delivered twice. Needs `redis-server` on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use client_resume::{run_cluster, ClusterDemo};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_clients_node_loses_nothing_and_duplicates_nothing() {
    let report = run_cluster(ClusterDemo::default()).await.unwrap();
    println!("{report:?}\n{}", report.summary());
    assert_eq!(report.published, 60);
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report:?}");
    assert_eq!(report.received, report.published, "{report:?}");
    assert!(
        report.recoveries >= 1 && report.recovery_failures == 0,
        "{report:?}"
    );
    assert_eq!(report.serial_gaps, 0, "{report:?}");
    assert_eq!(
        report.resumed_on,
        Some(1 - report.killed_node),
        "{report:?}"
    );
}
