//! A minimal HTTP/1 server for the modes that receive requests (the webhook target of
//! `--mode webhooks`, the publish endpoint of `--mode bare-server`): each request's body goes
//! to a handler that picks the status; the reply body is fixed.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serve `listener` until the task is dropped: every request's body to `handle`, answered
/// with its status and `reply`.
pub async fn serve<F>(listener: TcpListener, reply: &'static [u8], handle: Arc<F>)
where
    F: Fn(&[u8]) -> StatusCode + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut resp = Response::new(Full::new(Bytes::from_static(reply)));
                    *resp.status_mut() = handle(&body);
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
