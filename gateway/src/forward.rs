//! The `forward` policy: an HTTP request travels to the home region's gateway as one protobuf
//! message over the inter-region QUIC link (mutual TLS: each side's certificate names a gateway
//! of its region), is executed there, and its response comes back the same way.
//!
//! Bodies are held whole (bounded by `gateway.max_forward_body_bytes`): the link carries one
//! message each way per request. Clients with larger bodies follow the redirect instead.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use homeport_config::Deployment;
use homeport_wire::{self as wire, Identity, Role, pb};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::proxy::strip_hop_by_hop;

/// How long connecting to another region's gateway may take before the request is answered 502.
const CONNECT_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("region {0} runs no gateway (no [regions.gateway] in the config)")]
    NoGateway(String),
    #[error("the gateway of region {region} could not be reached: {detail}")]
    Unreachable { region: String, detail: String },
    #[error("the gateway of region {region} did not answer within {timeout_ms} ms")]
    Timeout { region: String, timeout_ms: u64 },
    #[error("the gateway of region {region} refused the forwarded request: {detail}")]
    Refused { region: String, detail: String },
}

/// Client side: one cached QUIC connection per home region.
pub(crate) struct Forwarder {
    endpoint: quinn::Endpoint,
    peers: HashMap<String, (SocketAddr, Identity)>,
    conns: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
    max_frame_bytes: usize,
}

impl Forwarder {
    pub fn new(endpoint: quinn::Endpoint, deployment: &Deployment, max_frame_bytes: usize) -> Self {
        let peers = deployment
            .regions
            .iter()
            .filter_map(|r| {
                let g = r.gateway.as_ref()?;
                let id = Identity {
                    name: homeport_config::gateway_identity(&r.name),
                    role: Role::Gateway,
                    region: r.name.clone(),
                };
                Some((r.name.clone(), (g.quic_addr, id)))
            })
            .collect();
        Forwarder {
            endpoint,
            peers,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            max_frame_bytes,
        }
    }

    async fn connection(&self, region: &str) -> Result<quinn::Connection, ForwardError> {
        let (addr, id) = self
            .peers
            .get(region)
            .ok_or_else(|| ForwardError::NoGateway(region.to_string()))?;
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(region)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = wire::connect(&self.endpoint, *addr, id, CONNECT_TIMEOUT_MS)
            .await
            .map_err(|e| ForwardError::Unreachable {
                region: region.to_string(),
                detail: e.to_string(),
            })?;
        conns.insert(region.to_string(), conn.clone());
        Ok(conn)
    }

    async fn forget(&self, region: &str) {
        self.conns.lock().await.remove(region);
    }

    /// One round trip; a connection that died since it was cached is replaced once.
    pub async fn call(
        &self,
        region: &str,
        msg: pb::GatewayForwardRequest,
        timeout_ms: u64,
    ) -> Result<pb::GatewayForwardResponse, ForwardError> {
        let req = wire::request(pb::request::Body::GatewayForward(msg));
        let mut last = None;
        for _attempt in 0..2 {
            let conn = self.connection(region).await?;
            match wire::call(&conn, &req, timeout_ms, self.max_frame_bytes).await {
                Ok(resp) => {
                    return match resp.body {
                        Some(pb::response::Body::GatewayForward(r)) => Ok(r),
                        Some(pb::response::Body::Error(e)) => Err(ForwardError::Refused {
                            region: region.to_string(),
                            detail: e.message,
                        }),
                        _ => Err(ForwardError::Refused {
                            region: region.to_string(),
                            detail: "an answer that is not a gateway_forward response".into(),
                        }),
                    };
                }
                Err(wire::WireError::Timeout { .. }) => {
                    return Err(ForwardError::Timeout {
                        region: region.to_string(),
                        timeout_ms,
                    });
                }
                Err(e) => {
                    self.forget(region).await;
                    last = Some(e.to_string());
                }
            }
        }
        Err(ForwardError::Unreachable {
            region: region.to_string(),
            detail: last.unwrap_or_default(),
        })
    }
}

fn headers_to_message(headers: &HeaderMap) -> Vec<pb::HttpHeader> {
    headers
        .iter()
        .map(|(k, v)| pb::HttpHeader {
            name: k.as_str().to_string(),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect()
}

fn headers_from_message(list: &[pb::HttpHeader]) -> Result<HeaderMap, String> {
    let mut out = HeaderMap::with_capacity(list.len());
    for h in list {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not valid", h.name))?;
        let value = HeaderValue::from_bytes(&h.value)
            .map_err(|_| format!("header {:?} has a value that is not valid", h.name))?;
        out.append(name, value);
    }
    strip_hop_by_hop(&mut out);
    Ok(out)
}

/// The message for a request whose body was already read (within the limit).
pub(crate) fn request_message(
    parts: &http::request::Parts,
    body: Bytes,
    origin_region: &str,
    client: SocketAddr,
) -> pb::GatewayForwardRequest {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    pb::GatewayForwardRequest {
        method: parts.method.as_str().to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers: headers_to_message(&headers),
        body,
        origin_region: origin_region.to_string(),
        client_addr: client.to_string(),
    }
}

/// The home side: the request to execute, and the original client's address.
pub(crate) fn request_from_message(
    msg: pb::GatewayForwardRequest,
) -> Result<(Request<Body>, Option<SocketAddr>), String> {
    let method = Method::from_bytes(msg.method.as_bytes())
        .map_err(|_| format!("method {:?} is not valid", msg.method))?;
    if !msg.path_and_query.starts_with('/') {
        return Err(format!(
            "path {:?} is not in origin form (it must start with '/')",
            msg.path_and_query
        ));
    }
    let uri: http::Uri = msg
        .path_and_query
        .parse()
        .map_err(|e| format!("path {:?} is not valid: {e}", msg.path_and_query))?;
    let headers = headers_from_message(&msg.headers)?;
    let mut req = Request::new(full(msg.body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok((req, msg.client_addr.parse().ok()))
}

pub(crate) fn response_message(
    parts: &http::response::Parts,
    body: Bytes,
) -> pb::GatewayForwardResponse {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    pb::GatewayForwardResponse {
        status: u32::from(parts.status.as_u16()),
        headers: headers_to_message(&headers),
        body,
    }
}

pub(crate) fn response_from_message(
    msg: pb::GatewayForwardResponse,
) -> Result<Response<Body>, String> {
    let status = u16::try_from(msg.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("status {} is not an HTTP status", msg.status))?;
    let mut headers = headers_from_message(&msg.headers)?;
    headers.remove(http::header::CONTENT_LENGTH);
    let mut resp = Response::new(full(msg.body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_without_hop_by_hop_fields() {
        let req = Request::builder()
            .method("PUT")
            .uri("/v1/users/sh-1/records/k?x=1")
            .header("if-match", "\"3\"")
            .header("connection", "close")
            .header("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap())
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let msg = request_message(
            &parts,
            Bytes::from_static(b"v"),
            "hk",
            "127.0.0.1:9".parse().unwrap(),
        );
        let (back, client) = request_from_message(msg).unwrap();
        assert_eq!(client, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(back.method(), Method::PUT);
        assert_eq!(back.uri(), "/v1/users/sh-1/records/k?x=1");
        assert_eq!(back.headers()["if-match"], "\"3\"");
        assert_eq!(back.headers()["x-bin"].as_bytes(), b"\xff\xfe");
        assert!(back.headers().get("connection").is_none());
    }

    #[test]
    fn garbage_messages_are_refused_not_panicked_on() {
        let bad = [
            pb::GatewayForwardRequest {
                method: "GE T".into(),
                path_and_query: "/".into(),
                ..Default::default()
            },
            pb::GatewayForwardRequest {
                method: "GET".into(),
                path_and_query: "http://evil/".into(),
                ..Default::default()
            },
            pb::GatewayForwardRequest {
                method: "GET".into(),
                path_and_query: "/".into(),
                headers: vec![pb::HttpHeader {
                    name: "bad name".into(),
                    value: Bytes::new(),
                }],
                ..Default::default()
            },
        ];
        for m in bad {
            assert!(request_from_message(m).is_err());
        }
        assert!(
            response_from_message(pb::GatewayForwardResponse {
                status: 70_000,
                ..Default::default()
            })
            .is_err()
        );
    }
}
