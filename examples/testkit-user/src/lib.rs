//! `testkit-user`: nothing but a test (`tests/process_cluster.rs`) written the way a user of
//! `sockudo-testkit` writes one in their own crate: a cluster of real `sockudo` processes with
//! no manual build step (the testkit builds the binary when it finds none).
