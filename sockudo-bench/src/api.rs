//! Signed HTTP API calls for the multi-process modes: `POST /apps/{id}/events` (and any
//! other signed call) to any node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde::Serialize;

use crate::publisher;

/// Give up on one request after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive client with the app's credentials.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    app_id: String,
    key: String,
    secret: String,
}

#[derive(Serialize)]
struct PublishBody<'a> {
    name: &'a str,
    channel: &'a str,
    data: &'a str,
}

impl Api {
    /// A client pool sized for `concurrency` requests in flight.
    pub fn new(app_id: &str, key: &str, secret: &str, concurrency: usize) -> Self {
        Api {
            client: publisher::http_client(concurrency),
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
        }
    }

    /// A signed `method` request of `path` (`/apps/{id}/…`) with a JSON `body` (empty for
    /// none) through `base`; returns the status and body.
    pub async fn call(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let query = sockudo_core::auth::sign_api_request(
            &self.key,
            &self.secret,
            method,
            path,
            &[],
            &body,
            now,
        );
        let uri = format!("{}{}?{}", base.trim_end_matches('/'), path, query);
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("build request: {e}"))?;
        self.send(req).await
    }

    /// The app id the client signs for.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Publish `name` on `channel` with `data` through `base` (`http://host:port`); returns
    /// the status and body.
    pub async fn publish(
        &self,
        base: &str,
        channel: &str,
        name: &str,
        data: &str,
    ) -> Result<(u16, Bytes), String> {
        let body = serde_json::to_vec(&PublishBody {
            name,
            channel,
            data,
        })
        .map_err(|e| format!("encode body: {e}"))?;
        let path = format!("/apps/{}/events", self.app_id);
        self.call(base, "POST", &path, body).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("read response: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| "request timed out".to_string())?
    }
}
