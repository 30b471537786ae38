//! Push notifications end to end (cargo feature `push`): the API over real HTTP with signed
//! requests, on the memory and the Redis store, with wiremock / HTTP/2 servers standing in
//! for the providers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod apns;
mod failover;
mod fcm;
mod harness;
mod publish;
// The core's `redis-server` launcher (one copy for every crate's tests).
#[path = "../../../sockudo-core/tests/support/redis_server.rs"]
mod redis_server;
mod webpush;
