//! The routes the gateway serves itself, matched without allocation. [`API_ROUTES`] is the list
//! the OpenAPI document must describe (a test checks both directions).

use homeport_config::Upstream;

/// Every (method, path template) the gateway answers itself; anything else is an upstream
/// prefix or 404.
pub const API_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/users"),
    ("GET", "/v1/whereis/{uid}"),
    ("GET", "/v1/users/{uid}/records/{key}"),
    ("PUT", "/v1/users/{uid}/records/{key}"),
    ("DELETE", "/v1/users/{uid}/records/{key}"),
    ("GET", "/v1/wechat-ids/{id}"),
    ("PUT", "/v1/wechat-ids/{id}"),
    ("DELETE", "/v1/wechat-ids/{id}"),
];

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    CreateUser,
    Whereis {
        uid: &'a str,
    },
    /// `uid` and `key` as they appear in the path (still percent-encoded).
    Record {
        uid: &'a str,
        key: &'a str,
    },
    /// A WeChat ID as it appears in the path (still percent-encoded).
    WechatId {
        id: &'a str,
    },
    /// The prefix of a configured upstream (of any region: the user's home decides which).
    Upstream {
        prefix: &'a str,
    },
    /// The path exists, the method does not; `allow` lists those that do.
    MethodNotAllowed {
        allow: &'static str,
    },
    NotFound,
}

pub(crate) fn route<'a>(
    method: &http::Method,
    path: &'a str,
    upstream_prefixes: &'a [String],
) -> Route<'a> {
    use http::Method;
    let mut parts = path.split('/');
    let segments: [Option<&str>; 6] = std::array::from_fn(|_| parts.next());
    let more = parts.next().is_some();
    let one = |s: Option<&'a str>| s.filter(|s| !s.is_empty());
    match segments {
        [Some(""), Some("v1"), Some("users"), None, None, None] => {
            if method == Method::POST {
                Route::CreateUser
            } else {
                Route::MethodNotAllowed { allow: "POST" }
            }
        }
        [Some(""), Some("v1"), Some("whereis"), uid, None, None] if one(uid).is_some() => {
            if method == Method::GET {
                Route::Whereis {
                    uid: uid.unwrap_or_default(),
                }
            } else {
                Route::MethodNotAllowed { allow: "GET" }
            }
        }
        [
            Some(""),
            Some("v1"),
            Some("users"),
            uid,
            Some("records"),
            key,
        ] if !more && one(uid).is_some() && one(key).is_some() => {
            if method == Method::GET || method == Method::PUT || method == Method::DELETE {
                Route::Record {
                    uid: uid.unwrap_or_default(),
                    key: key.unwrap_or_default(),
                }
            } else {
                Route::MethodNotAllowed {
                    allow: "GET, PUT, DELETE",
                }
            }
        }
        [Some(""), Some("v1"), Some("wechat-ids"), id, None, None] if one(id).is_some() => {
            if method == Method::GET || method == Method::PUT || method == Method::DELETE {
                Route::WechatId {
                    id: id.unwrap_or_default(),
                }
            } else {
                Route::MethodNotAllowed {
                    allow: "GET, PUT, DELETE",
                }
            }
        }
        _ => upstream_prefixes
            .iter()
            .filter(|p| path.starts_with(p.as_str()))
            .max_by_key(|p| p.len())
            .map(|prefix| Route::Upstream { prefix })
            .unwrap_or(Route::NotFound),
    }
}

/// Every upstream prefix of the deployment, once each.
pub(crate) fn all_prefixes<'a>(upstreams: impl Iterator<Item = &'a Upstream>) -> Vec<String> {
    let mut out: Vec<String> = upstreams.map(|u| u.prefix.clone()).collect();
    out.sort();
    out.dedup();
    out
}

/// Decodes `%XX` escapes of a path segment; `None` for a bad escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `name` in a query string (first occurrence, not decoded: the values the gateway
/// reads are words and numbers).
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes_match_exactly() {
        let ups = vec!["/chat/".to_string(), "/chat/big/".to_string()];
        let r = |m: &Method, p| route(m, p, &ups);
        assert_eq!(r(&Method::POST, "/v1/users"), Route::CreateUser);
        assert_eq!(
            r(&Method::GET, "/v1/users"),
            Route::MethodNotAllowed { allow: "POST" }
        );
        assert_eq!(
            r(&Method::GET, "/v1/whereis/sh-1"),
            Route::Whereis { uid: "sh-1" }
        );
        assert_eq!(r(&Method::GET, "/v1/whereis/"), Route::NotFound);
        assert_eq!(
            r(&Method::PUT, "/v1/users/sh-1/records/k"),
            Route::Record {
                uid: "sh-1",
                key: "k"
            }
        );
        assert_eq!(
            r(&Method::POST, "/v1/users/sh-1/records/k"),
            Route::MethodNotAllowed {
                allow: "GET, PUT, DELETE"
            }
        );
        assert_eq!(
            r(&Method::GET, "/v1/users/sh-1/records/k/x"),
            Route::NotFound
        );
        assert_eq!(r(&Method::GET, "/v1/users//records/k"), Route::NotFound);
        assert_eq!(
            r(&Method::GET, "/chat/big/x"),
            Route::Upstream {
                prefix: "/chat/big/"
            }
        );
        assert_eq!(
            r(&Method::POST, "/chat/x"),
            Route::Upstream { prefix: "/chat/" }
        );
        assert_eq!(r(&Method::GET, "/other"), Route::NotFound);
        assert_eq!(
            r(&Method::PUT, "/v1/wechat-ids/zhang_san"),
            Route::WechatId { id: "zhang_san" }
        );
        assert_eq!(
            r(&Method::POST, "/v1/wechat-ids/zhang_san"),
            Route::MethodNotAllowed {
                allow: "GET, PUT, DELETE"
            }
        );
        assert_eq!(r(&Method::GET, "/v1/wechat-ids/"), Route::NotFound);
        assert_eq!(r(&Method::GET, "/v1/wechat-ids/a/b"), Route::NotFound);
    }

    /// [`API_ROUTES`] (which the OpenAPI test checks) is exactly what [`route`] serves.
    #[test]
    fn the_route_table_is_what_the_router_serves() {
        let methods = [
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::HEAD,
        ];
        for (_, template) in API_ROUTES {
            let concrete = template
                .replace("{uid}", "sh-1")
                .replace("{key}", "k")
                .replace("{id}", "zhang_san");
            for m in &methods {
                let served = !matches!(
                    route(m, &concrete, &[]),
                    Route::NotFound | Route::MethodNotAllowed { .. }
                );
                let listed = API_ROUTES.contains(&(m.as_str(), *template));
                assert_eq!(served, listed, "{m} {template}");
            }
        }
    }

    #[test]
    fn percent_decoding_refuses_bad_escapes() {
        assert_eq!(percent_decode("sh-1").as_deref(), Some("sh-1"));
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn query_params_are_found() {
        let q = Some("consistency=critical&min_version=7&flag");
        assert_eq!(query_param(q, "consistency"), Some("critical"));
        assert_eq!(query_param(q, "min_version"), Some("7"));
        assert_eq!(query_param(q, "flag"), Some(""));
        assert_eq!(query_param(q, "x"), None);
        assert_eq!(query_param(None, "x"), None);
    }
}
