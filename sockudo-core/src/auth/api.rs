//! Pusher HTTP API request authentication (docs/protocol.md §5).
//!
//! Every API request carries `auth_key`, `auth_timestamp`, `auth_version`, optionally
//! `body_md5`, and `auth_signature` = hex HMAC-SHA256 over
//! `"{METHOD}\n{path}\n{canonical query}"`. The canonical query is every parameter except
//! `auth_signature`, keys lower-cased, sorted by key, joined `k=v&…` with values *decoded*.
//!
//! Parsing and verifying are split ([`ApiQuery::parse`] then [`ApiQuery::verify`]) because the
//! caller needs `auth_key` to look up the app, and so the secret, in between.

use std::collections::BTreeMap;

use super::signature::{body_md5_hex, hmac_sha256_hex, verify_hmac_sha256_hex};

/// How far `auth_timestamp` may be from the server clock, either way, in seconds.
pub const DEFAULT_TIMESTAMP_WINDOW_SECS: u64 = 600;

/// The only `auth_version` any SDK has ever sent.
const AUTH_VERSION: &str = "1.0";

const AUTH_KEY: &str = "auth_key";
const AUTH_TIMESTAMP: &str = "auth_timestamp";
const AUTH_VERSION_PARAM: &str = "auth_version";
const AUTH_SIGNATURE: &str = "auth_signature";
const BODY_MD5: &str = "body_md5";

/// Why an HTTP API request failed authentication.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiAuthError {
    /// A required `auth_*` parameter is absent (or, for key and signature, empty).
    #[error("missing required query parameter `{0}`")]
    MissingParam(&'static str),
    /// `auth_version` is not `1.0`.
    #[error("unsupported auth_version (expected {AUTH_VERSION})")]
    BadVersion,
    /// `auth_timestamp` is not a non-negative integer number of seconds.
    #[error("auth_timestamp must be a unix timestamp in whole seconds")]
    BadTimestamp,
    /// `auth_timestamp` is outside the accepted window around the server clock.
    #[error("auth_timestamp is {skew_secs}s away from the server clock; check the client's clock")]
    Expired {
        /// Absolute distance between the request timestamp and the server clock.
        skew_secs: u64,
    },
    /// The request has a body but no `body_md5` parameter.
    #[error("body_md5 is required when the request has a body")]
    MissingBodyMd5,
    /// `body_md5` does not match the MD5 of the received body.
    #[error("body_md5 does not match the request body")]
    BodyMd5Mismatch,
    /// `auth_signature` does not match the one computed with the app secret.
    #[error("invalid auth_signature")]
    InvalidSignature,
    /// The query string could not be decoded.
    #[error("malformed query string: {0}")]
    Malformed(String),
}

impl ApiAuthError {
    /// HTTP status to answer with: 400 when the request is not well-formed enough to be judged,
    /// 401 when it is well-formed but its credentials (signature, freshness, body digest) fail.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MissingParam(_) | Self::BadVersion | Self::BadTimestamp | Self::Malformed(_) => {
                400
            }
            Self::Expired { .. }
            | Self::MissingBodyMd5
            | Self::BodyMd5Mismatch
            | Self::InvalidSignature => 401,
        }
    }
}

/// Parsed, URL-decoded auth params of a request's query string.
///
/// Keys are lower-cased on parse, as the signature is computed over lower-cased keys; when a
/// key occurs more than once (after lower-casing) the **last** occurrence wins, both for the
/// accessors and for the string that is verified.
#[derive(Debug, Clone)]
pub struct ApiQuery {
    auth_key: String,
    auth_timestamp_raw: String,
    auth_timestamp: Option<u64>,
    auth_version: String,
    body_md5: Option<String>,
    auth_signature: String,
    /// Every parameter except `auth_signature`, decoded, keys lower-cased, sorted, unique.
    params: Vec<(String, String)>,
}

impl ApiQuery {
    /// Parse a raw (still percent-encoded) query string, with or without a leading `'?'`.
    ///
    /// Errors: a missing `auth_key` / `auth_timestamp` / `auth_signature` / `auth_version` gives
    /// [`ApiAuthError::MissingParam`]; an invalid `%` escape or non-UTF-8 result gives
    /// [`ApiAuthError::Malformed`]. Duplicated keys are tolerated: the last one wins. The
    /// timestamp and version *values* are only judged by [`verify`](Self::verify), so that its
    /// documented check order holds.
    pub fn parse(raw_query: &str) -> Result<Self, ApiAuthError> {
        let raw = raw_query.strip_prefix('?').unwrap_or(raw_query);
        let mut signature = None;
        let mut decoded = Vec::new();
        for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
            // A bare `flag` (no '=') is a key with an empty value, as in every URL parser.
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            if key.to_lowercase() == AUTH_SIGNATURE {
                signature = Some(value);
            } else {
                decoded.push((key, value));
            }
        }
        let params: Vec<(String, String)> = canonical_params(decoded).into_iter().collect();
        let lookup = |name: &str| {
            params
                .binary_search_by(|(key, _)| key.as_str().cmp(name))
                .ok()
                .and_then(|index| params.get(index))
                .map(|(_, value)| value.clone())
        };

        let auth_key = lookup(AUTH_KEY)
            .filter(|key| !key.is_empty())
            .ok_or(ApiAuthError::MissingParam(AUTH_KEY))?;
        let auth_timestamp_raw =
            lookup(AUTH_TIMESTAMP).ok_or(ApiAuthError::MissingParam(AUTH_TIMESTAMP))?;
        let auth_version =
            lookup(AUTH_VERSION_PARAM).ok_or(ApiAuthError::MissingParam(AUTH_VERSION_PARAM))?;
        let auth_signature = signature
            .filter(|signature| !signature.is_empty())
            .ok_or(ApiAuthError::MissingParam(AUTH_SIGNATURE))?;
        let body_md5 = lookup(BODY_MD5);
        let auth_timestamp = parse_timestamp(&auth_timestamp_raw);

        Ok(Self {
            auth_key,
            auth_timestamp_raw,
            auth_timestamp,
            auth_version,
            body_md5,
            auth_signature,
            params,
        })
    }

    /// The app key the request claims; use it to look up the app and its secret.
    pub fn auth_key(&self) -> &str {
        &self.auth_key
    }

    /// `auth_timestamp` as sent (decoded).
    pub fn auth_timestamp_raw(&self) -> &str {
        &self.auth_timestamp_raw
    }

    /// `auth_timestamp` as unix seconds, `None` when it is not a plain decimal integer.
    pub fn auth_timestamp(&self) -> Option<u64> {
        self.auth_timestamp
    }

    /// `auth_version` as sent.
    pub fn auth_version(&self) -> &str {
        &self.auth_version
    }

    /// `body_md5` as sent, if present.
    pub fn body_md5(&self) -> Option<&str> {
        self.body_md5.as_deref()
    }

    /// `auth_signature` as sent.
    pub fn auth_signature(&self) -> &str {
        &self.auth_signature
    }

    /// Every parameter except `auth_signature` (including the other `auth_*` ones), decoded,
    /// keys lower-cased, sorted by key and unique.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// A decoded parameter by (lower-case) name, e.g. `get("info")` or `get("filter_by_prefix")`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .binary_search_by(|(key, _)| key.as_str().cmp(name))
            .ok()
            .and_then(|index| self.params.get(index))
            .map(|(_, value)| value.as_str())
    }

    /// Checks, in this order: `auth_version == "1.0"`; timestamp within ±`window_secs` of
    /// `now_unix`; `body_md5`: when `body` is non-empty it is required and must equal
    /// md5(body); when `body` is empty a `body_md5` param is tolerated if it equals md5("") (the
    /// Python SDK sends it on GET) and otherwise rejected; then the signature over
    /// `"{METHOD}\n{path}\n{sorted query}"` with a constant-time compare.
    ///
    /// `path` must be the request path exactly as received (no decoding, no query), since that
    /// is what the client signed.
    pub fn verify(
        &self,
        secret: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now_unix: u64,
        window_secs: u64,
    ) -> Result<(), ApiAuthError> {
        if self.auth_version != AUTH_VERSION {
            return Err(ApiAuthError::BadVersion);
        }
        let timestamp = self.auth_timestamp.ok_or(ApiAuthError::BadTimestamp)?;
        let skew_secs = now_unix.abs_diff(timestamp);
        if skew_secs > window_secs {
            return Err(ApiAuthError::Expired { skew_secs });
        }
        match &self.body_md5 {
            None if !body.is_empty() => return Err(ApiAuthError::MissingBodyMd5),
            None => {}
            // The digest of a body we already hold is not secret, so a plain compare is fine;
            // case-insensitive because hex case carries no meaning.
            Some(sent) if !sent.eq_ignore_ascii_case(&body_md5_hex(body)) => {
                return Err(ApiAuthError::BodyMd5Mismatch);
            }
            Some(_) => {}
        }
        let message = string_to_sign(
            method,
            path,
            self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if verify_hmac_sha256_hex(secret.as_bytes(), message.as_bytes(), &self.auth_signature) {
            Ok(())
        } else {
            Err(ApiAuthError::InvalidSignature)
        }
    }
}

/// The canonical string: params except auth_signature, keys lower-cased, sorted by key, joined
/// "k=v&..." with values UNescaped (decoded).
///
/// The method is upper-cased (SDKs sign `POST`, not `post`). Duplicate keys collapse to the last
/// occurrence, matching [`ApiQuery::parse`].
pub fn api_string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let canonical = canonical_params(params.iter().cloned());
    string_to_sign(
        method,
        path,
        canonical.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// Build a full signed query string (percent-encoded values, with auth_key, auth_timestamp,
/// auth_version=1.0, body_md5 when body non-empty, and auth_signature).
///
/// `extra` are the user params (e.g. `info=user_count`); an `auth_*` name among them is
/// overridden by the real value, but a `body_md5` passes through when the body is empty, which
/// lets tests imitate SDKs that send md5("") on GET.
pub fn sign_api_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut params = canonical_params(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    params.insert(AUTH_KEY.to_owned(), key.to_owned());
    params.insert(AUTH_TIMESTAMP.to_owned(), timestamp.to_string());
    params.insert(AUTH_VERSION_PARAM.to_owned(), AUTH_VERSION.to_owned());
    if !body.is_empty() {
        params.insert(BODY_MD5.to_owned(), body_md5_hex(body));
    }
    let message = string_to_sign(
        method,
        path,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let signature = hmac_sha256_hex(secret.as_bytes(), message.as_bytes());

    let mut query = String::new();
    for (k, v) in &params {
        percent_encode_into(&mut query, k);
        query.push('=');
        percent_encode_into(&mut query, v);
        query.push('&');
    }
    query.push_str(AUTH_SIGNATURE);
    query.push('=');
    query.push_str(&signature);
    query
}

/// Lower-case keys, drop `auth_signature`, last duplicate wins; the `BTreeMap` gives the byte-wise
/// key order every SDK sorts by.
fn canonical_params(
    params: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    params
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .filter(|(k, _)| k != AUTH_SIGNATURE)
        .collect()
}

/// `params` must already be canonical (lower-cased, sorted, unique).
fn string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = format!("{}\n{path}\n", method.to_ascii_uppercase());
    for (index, (k, v)) in params.enumerate() {
        if index > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Only plain decimal digits: `u64::from_str` would also take a leading `+`, which no SDK sends.
fn parse_timestamp(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding (`%XX` and `+` as space). A stray `%` is an
/// error rather than a literal so that differently-lenient parsers upstream cannot make the
/// signed string and the verified string disagree.
fn percent_decode(input: &str) -> Result<String, ApiAuthError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            b'%' => {
                let high = bytes.get(index + 1).copied().and_then(hex_value);
                let low = bytes.get(index + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(ApiAuthError::Malformed(format!(
                        "invalid percent-escape at byte {index}"
                    )));
                };
                out.push((high << 4) | low);
                index += 3;
            }
            other => {
                out.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiAuthError::Malformed("percent-decoded value is not UTF-8".to_owned()))
}

/// Escape everything but RFC 3986 unreserved characters, so the output survives any decoder
/// (including one that treats `+` as space).
fn percent_encode_into(out: &mut String, input: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in input.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Pusher docs worked example.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TS: u64 = 1_353_088_179;
    const BODY: &[u8] = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const BODY_MD5: &str = "ec365a775a4cd0599faeb73354201b6f";
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    const EXAMPLE_SIG: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn example_query() -> String {
        format!(
            "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5={BODY_MD5}&auth_signature={EXAMPLE_SIG}"
        )
    }

    #[test]
    fn worked_example_string_and_signature() {
        // Deliberately unsorted and with an upper-case key: canonicalisation must fix both.
        let params = owned(&[
            ("body_md5", BODY_MD5),
            ("AUTH_KEY", KEY),
            ("auth_version", "1.0"),
            ("auth_timestamp", "1353088179"),
            ("auth_signature", "ignored"),
        ]);
        let to_sign = api_string_to_sign("post", "/apps/3/events", &params);
        assert_eq!(
            to_sign,
            format!(
                "POST\n/apps/3/events\nauth_key={KEY}&auth_timestamp=1353088179&auth_version=1.0&body_md5={BODY_MD5}"
            )
        );
        assert_eq!(
            hmac_sha256_hex(SECRET.as_bytes(), to_sign.as_bytes()),
            EXAMPLE_SIG
        );
        assert_eq!(body_md5_hex(BODY), BODY_MD5);
    }

    #[test]
    fn worked_example_parse_and_verify() {
        let query = ApiQuery::parse(&example_query()).unwrap();
        assert_eq!(query.auth_key(), KEY);
        assert_eq!(query.auth_timestamp(), Some(TS));
        assert_eq!(query.auth_timestamp_raw(), "1353088179");
        assert_eq!(query.auth_version(), "1.0");
        assert_eq!(query.body_md5(), Some(BODY_MD5));
        assert_eq!(query.auth_signature(), EXAMPLE_SIG);
        assert_eq!(query.params().len(), 4);
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/3/events", BODY, TS + 5, 600),
            Ok(())
        );
        // Leading '?' tolerated.
        let query = ApiQuery::parse(&format!("?{}", example_query())).unwrap();
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
            Ok(())
        );
    }

    #[test]
    fn worked_example_from_sign_api_request() {
        let signed = sign_api_request(KEY, SECRET, "POST", "/apps/3/events", &[], BODY, TS);
        assert_eq!(
            signed,
            format!(
                "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5={BODY_MD5}&auth_signature={EXAMPLE_SIG}"
            )
        );
    }

    #[test]
    fn wrong_secret_method_path_or_param_rejected() {
        let query = ApiQuery::parse(&example_query()).unwrap();
        let bad = Err(ApiAuthError::InvalidSignature);
        assert_eq!(
            query.verify("nope", "POST", "/apps/3/events", BODY, TS, 600),
            bad
        );
        assert_eq!(
            query.verify(SECRET, "GET", "/apps/3/events", BODY, TS, 600),
            bad
        );
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/4/events", BODY, TS, 600),
            bad
        );
        let tampered = ApiQuery::parse(&format!("{}&info=user_count", example_query())).unwrap();
        assert_eq!(
            tampered.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
            bad
        );
        let mut sig = EXAMPLE_SIG.to_owned();
        sig.replace_range(63..64, "d");
        let tampered = ApiQuery::parse(&example_query().replace(EXAMPLE_SIG, &sig)).unwrap();
        assert_eq!(
            tampered.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
            bad
        );
    }

    #[test]
    fn uppercase_signature_and_keys_accepted() {
        let raw = example_query()
            .replace(EXAMPLE_SIG, &EXAMPLE_SIG.to_uppercase())
            .replace("auth_version", "Auth_Version");
        let query = ApiQuery::parse(&raw).unwrap();
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
            Ok(())
        );
    }

    #[test]
    fn expired_both_directions() {
        let query = ApiQuery::parse(&example_query()).unwrap();
        let path = "/apps/3/events";
        assert_eq!(
            query.verify(SECRET, "POST", path, BODY, TS + 600, 600),
            Ok(())
        );
        assert_eq!(
            query.verify(SECRET, "POST", path, BODY, TS - 600, 600),
            Ok(())
        );
        assert_eq!(
            query.verify(SECRET, "POST", path, BODY, TS + 601, 600),
            Err(ApiAuthError::Expired { skew_secs: 601 })
        );
        assert_eq!(
            query.verify(SECRET, "POST", path, BODY, TS - 601, 600),
            Err(ApiAuthError::Expired { skew_secs: 601 })
        );
        // Expiry is judged before the signature, so a stale request never reaches HMAC work.
        assert_eq!(
            query.verify(
                "wrong",
                "POST",
                path,
                BODY,
                0,
                DEFAULT_TIMESTAMP_WINDOW_SECS
            ),
            Err(ApiAuthError::Expired { skew_secs: TS })
        );
    }

    #[test]
    fn missing_body_md5_with_body() {
        let signed = sign_api_request(KEY, SECRET, "POST", "/apps/3/events", &[], b"", TS);
        let query = ApiQuery::parse(&signed).unwrap();
        assert_eq!(query.body_md5(), None);
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
            Err(ApiAuthError::MissingBodyMd5)
        );
    }

    #[test]
    fn body_md5_mismatch() {
        let query = ApiQuery::parse(&example_query()).unwrap();
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/3/events", b"{}", TS, 600),
            Err(ApiAuthError::BodyMd5Mismatch)
        );
    }

    #[test]
    fn md5_of_empty_body_on_get_tolerated() {
        let path = "/apps/3/channels";
        let signed = sign_api_request(
            KEY,
            SECRET,
            "GET",
            path,
            &[("body_md5", EMPTY_MD5), ("info", "user_count")],
            b"",
            TS,
        );
        let query = ApiQuery::parse(&signed).unwrap();
        assert_eq!(query.body_md5(), Some(EMPTY_MD5));
        assert_eq!(query.verify(SECRET, "GET", path, b"", TS, 600), Ok(()));

        let signed = sign_api_request(KEY, SECRET, "GET", path, &[("body_md5", BODY_MD5)], b"", TS);
        let query = ApiQuery::parse(&signed).unwrap();
        assert_eq!(
            query.verify(SECRET, "GET", path, b"", TS, 600),
            Err(ApiAuthError::BodyMd5Mismatch)
        );
    }

    #[test]
    fn round_trip_with_awkward_values() {
        let path = "/apps/12345/channels";
        let extra = [
            ("info", "user_count,subscription_count"),
            ("filter_by_prefix", "presence-a b+c&d=e%f"),
            ("note", "héllo wörld ✓ 日本"),
            ("empty", ""),
        ];
        let signed = sign_api_request(KEY, SECRET, "GET", path, &extra, b"", TS);
        assert!(!signed.contains(' '));
        let query = ApiQuery::parse(&signed).unwrap();
        for (k, v) in extra {
            assert_eq!(query.get(k), Some(v), "{k}");
        }
        assert_eq!(query.verify(SECRET, "GET", path, b"", TS, 600), Ok(()));

        let signed = sign_api_request(KEY, SECRET, "POST", "/apps/12345/events", &extra, BODY, TS);
        let query = ApiQuery::parse(&signed).unwrap();
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/12345/events", BODY, TS, 600),
            Ok(())
        );
    }

    #[test]
    fn plus_decodes_to_space_and_signs_decoded() {
        // A client that form-encodes spaces as '+' signs the decoded value.
        let to_sign = api_string_to_sign(
            "GET",
            "/apps/1/channels",
            &owned(&[
                ("auth_key", KEY),
                ("auth_timestamp", "1"),
                ("auth_version", "1.0"),
                ("filter_by_prefix", "a b"),
            ]),
        );
        let sig = hmac_sha256_hex(SECRET.as_bytes(), to_sign.as_bytes());
        let raw = format!(
            "filter_by_prefix=a+b&auth_key={KEY}&auth_timestamp=1&auth_version=1.0&auth_signature={sig}"
        );
        let query = ApiQuery::parse(&raw).unwrap();
        assert_eq!(query.get("filter_by_prefix"), Some("a b"));
        assert_eq!(
            query.verify(SECRET, "GET", "/apps/1/channels", b"", 1, 600),
            Ok(())
        );
    }

    #[test]
    fn missing_params() {
        let full = example_query();
        for (name, expected) in [
            ("auth_key", "auth_key"),
            ("auth_timestamp", "auth_timestamp"),
            ("auth_version", "auth_version"),
            ("auth_signature", "auth_signature"),
        ] {
            let raw: Vec<&str> = full
                .split('&')
                .filter(|pair| !pair.starts_with(name))
                .collect();
            let err = ApiQuery::parse(&raw.join("&")).unwrap_err();
            assert_eq!(err, ApiAuthError::MissingParam(expected));
            assert_eq!(err.http_status(), 400);
        }
        assert_eq!(
            ApiQuery::parse("").unwrap_err(),
            ApiAuthError::MissingParam("auth_key")
        );
        let empty_key = full.replace(&format!("auth_key={KEY}"), "auth_key=");
        assert_eq!(
            ApiQuery::parse(&empty_key).unwrap_err(),
            ApiAuthError::MissingParam("auth_key")
        );
    }

    #[test]
    fn bad_version_and_timestamp() {
        let raw = example_query().replace("auth_version=1.0", "auth_version=2.0");
        let query = ApiQuery::parse(&raw).unwrap();
        assert_eq!(
            query.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
            Err(ApiAuthError::BadVersion)
        );
        for bad in [
            "abc",
            "+1353088179",
            "-5",
            "1.5",
            "",
            "99999999999999999999999",
        ] {
            let raw = example_query().replace(
                "auth_timestamp=1353088179",
                &format!("auth_timestamp={bad}"),
            );
            let query = ApiQuery::parse(&raw).unwrap();
            assert_eq!(query.auth_timestamp(), None, "{bad}");
            assert_eq!(
                query.verify(SECRET, "POST", "/apps/3/events", BODY, TS, 600),
                Err(ApiAuthError::BadTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_escapes() {
        for raw in [
            "auth_key=%",
            "auth_key=%4",
            "auth_key=%G1",
            "auth_key=%4g",
            "%zz=1",
            "auth_key=%FF",
            "a=%C3%28",
        ] {
            let err = ApiQuery::parse(raw).unwrap_err();
            assert!(matches!(err, ApiAuthError::Malformed(_)), "{raw}: {err:?}");
            assert_eq!(err.http_status(), 400);
        }
        assert_eq!(percent_decode("%41%62+c%2B%e2%9c%93").unwrap(), "Ab c+✓");
    }

    #[test]
    fn duplicates_last_wins() {
        let raw = format!("{}&info=a&INFO=b&auth_key=other", example_query());
        let query = ApiQuery::parse(&raw).unwrap();
        assert_eq!(query.get("info"), Some("b"));
        assert_eq!(query.auth_key(), "other");
        assert_eq!(
            query.params().iter().filter(|(k, _)| k == "info").count(),
            1
        );
    }

    #[test]
    fn http_statuses() {
        assert_eq!(ApiAuthError::InvalidSignature.http_status(), 401);
        assert_eq!(ApiAuthError::Expired { skew_secs: 1 }.http_status(), 401);
        assert_eq!(ApiAuthError::MissingBodyMd5.http_status(), 401);
        assert_eq!(ApiAuthError::BodyMd5Mismatch.http_status(), 401);
        assert_eq!(ApiAuthError::BadVersion.http_status(), 400);
        assert_eq!(ApiAuthError::BadTimestamp.http_status(), 400);
        assert_eq!(ApiAuthError::MissingParam("auth_key").http_status(), 400);
        assert_eq!(ApiAuthError::Malformed(String::new()).http_status(), 400);
        assert!(ApiAuthError::Expired { skew_secs: 700 }
            .to_string()
            .contains("700s"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in ".*") {
            let _ = ApiQuery::parse(&raw);
        }

        #[test]
        fn parse_never_panics_on_query_like_input(raw in "[a-z_%&=+0-9A-Fg?\u{e9}]{0,64}") {
            let _ = ApiQuery::parse(&raw);
        }

        #[test]
        fn sign_then_verify_round_trips(
            extra in proptest::collection::vec((".{0,12}", ".*"), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            timestamp in 0u64..4_000_000_000,
            method in "(GET|POST|get)",
        ) {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let path = "/apps/42/events";
            let signed = sign_api_request(KEY, SECRET, &method, path, &extra, &body, timestamp);
            let query = ApiQuery::parse(&signed).unwrap();
            prop_assert_eq!(query.auth_key(), KEY);
            let outcome = query.verify(SECRET, &method, path, &body, timestamp, DEFAULT_TIMESTAMP_WINDOW_SECS);
            // A user-supplied body_md5 on an empty body is the one input that may legitimately fail.
            let user_md5 = extra.iter().rev().find(|(k, _)| k.to_lowercase() == "body_md5").map(|(_, v)| *v);
            match user_md5 {
                Some(md5) if body.is_empty() && !md5.eq_ignore_ascii_case(EMPTY_MD5) =>
                    prop_assert_eq!(outcome, Err(ApiAuthError::BodyMd5Mismatch)),
                _ => prop_assert_eq!(outcome, Ok(())),
            }
            // Each user param (other than those sign_api_request owns) reads back verbatim.
            for (k, _) in &extra {
                let key = k.to_lowercase();
                if key.starts_with("auth_") || key == "body_md5" {
                    continue;
                }
                let last = extra.iter().rev().find(|(k2, _)| k2.to_lowercase() == key).map(|(_, v2)| *v2);
                prop_assert_eq!(query.get(&key), last);
            }
        }
    }
}
