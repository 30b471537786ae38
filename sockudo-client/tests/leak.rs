//! 1,000 connect/close cycles leave no task behind (counted, not timed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use sockudo_client::live_connection_tasks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_cycles_leave_no_tasks() {
    let node = node().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // Warm up reqwest/tungstenite statics outside the count.
    connect(&node, "w").await.close().await.unwrap();
    settle(0).await;
    let before = metrics.num_alive_tasks();

    for i in 0..1000 {
        let client = connect(&node, "u").await;
        let sub = client
            .subscribe(if i % 2 == 0 { "public" } else { "private-x" })
            .await
            .unwrap();
        drop(sub);
        client.close().await.unwrap();
    }
    settle(0).await;
    assert_eq!(live_connection_tasks(), 0, "connection tasks still alive");
    let mut after = metrics.num_alive_tasks();
    for _ in 0..100 {
        if after <= before {
            break;
        }
        tokio::task::yield_now().await;
        after = metrics.num_alive_tasks();
    }
    assert!(
        after <= before,
        "runtime tasks: {before} before, {after} after 1,000 cycles"
    );

    // Dropping every handle ends the task too.
    let client = connect(&node, "u").await;
    let _sub = client.subscribe("public").await.unwrap();
    drop(client);
    assert_eq!(
        live_connection_tasks(),
        1,
        "a live subscription keeps the connection"
    );
    drop(_sub);
    settle(0).await;
}

/// Wait until exactly `n` connection tasks are alive, checking a bounded number of times.
async fn settle(n: usize) {
    for _ in 0..500 {
        if live_connection_tasks() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(live_connection_tasks(), n);
}
