//! Test doubles shared by the layers' tests.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::{Cache, CacheError};

/// A [`Cache`] whose every operation fails, as an unreachable backend would.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FailingCache;

fn down<T>() -> Result<T, CacheError> {
    Err(CacheError::Unavailable("connection refused".into()))
}

#[async_trait]
impl Cache for FailingCache {
    async fn get(&self, _: &str) -> Result<Option<Bytes>, CacheError> {
        down()
    }
    async fn set(&self, _: &str, _: Bytes, _: Option<Duration>) -> Result<(), CacheError> {
        down()
    }
    async fn set_if_absent(
        &self,
        _: &str,
        _: Bytes,
        _: Option<Duration>,
    ) -> Result<bool, CacheError> {
        down()
    }
    async fn delete(&self, _: &str) -> Result<bool, CacheError> {
        down()
    }
    async fn increment(&self, _: &str, _: i64, _: Option<Duration>) -> Result<i64, CacheError> {
        down()
    }
    async fn compare_and_swap(
        &self,
        _: &str,
        _: Option<&[u8]>,
        _: Bytes,
        _: Option<Duration>,
    ) -> Result<bool, CacheError> {
        down()
    }
}
