//! Fetching an upstream identity provider's documents (OpenID discovery,
//! JWKS) for the token exchange. A tenant's administrator chooses these
//! URLs, so the fetch is treated as hostile input: https only, no address
//! of the control plane's own networks (checked on what the name resolves
//! to, and the connection pinned to that address so a second lookup
//! cannot differ), no redirects, a capped body and time, every document
//! cached, refetched at most once per `REFETCH_MS_MIN` per URL whatever
//! tokens arrive, and failures told to the caller without their detail
//! (which would map the internal network for whoever asks).
//!
//! The decisions ([`check_url`], [`is_public`], [`Documents`]) are pure;
//! [`fetch`] is the one that does I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Bytes of a discovery or JWKS document read at most.
pub const DOCUMENT_BYTES_MAX: usize = 256 * 1024;
/// How long one fetch (resolution, connection, body) may take.
pub const FETCH_MS_MAX: u64 = 5_000;
/// How long a fetched document is used before it is fetched again.
pub const DOCUMENT_TTL_MS: u64 = 300_000;
/// The least time between two fetches of one URL, whatever asks: a token
/// with an unknown `kid` cannot make the control plane fetch faster.
pub const REFETCH_MS_MIN: u64 = 30_000;
/// Documents cached at once (the oldest is dropped for a new one).
pub const DOCUMENTS_CACHED_MAX: usize = 1_024;

/// Why an upstream document was not used. Its text is for the control
/// plane's log; callers are told only [`FetchError::PUBLIC`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    /// What a caller of the token exchange is told.
    pub const PUBLIC: &'static str =
        "the identity provider's keys could not be fetched (the control plane's log says why)";
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unique-local, multicast, unspecified or
/// reserved, also when an IPv6 address carries an IPv4 one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                // IPv4-compatible (deprecated) and NAT64 well-known forms.
                || v6.segments()[..6] == [0; 6]
                || v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
        }
    }
}

/// A URL to fetch: its host and port, once its form is acceptable.
/// `insecure` (a development override) also allows `http://`.
pub fn check_url(url: &str, insecure: bool) -> Result<(reqwest::Url, String, u16), FetchError> {
    let u = reqwest::Url::parse(url).map_err(|e| FetchError::Refused(format!("{url:?}: {e}")))?;
    match u.scheme() {
        "https" => {}
        "http" if insecure => {}
        s => {
            return Err(FetchError::Refused(format!(
                "{url:?}: only https is fetched (not {s})"
            )))
        }
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(FetchError::Refused(format!("{url:?}: credentials in the URL")));
    }
    let host = u
        .host_str()
        .ok_or_else(|| FetchError::Refused(format!("{url:?}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = u
        .port_or_known_default()
        .ok_or_else(|| FetchError::Refused(format!("{url:?}: no port")))?;
    Ok((u, host, port))
}

/// The address to connect to among those `host` resolved to: refused if
/// any is not public (a name that also resolves inward is not trusted).
pub fn choose_address(host: &str, addrs: &[SocketAddr], insecure: bool) -> Result<SocketAddr, FetchError> {
    let first = addrs
        .first()
        .ok_or_else(|| FetchError::Failed(format!("{host}: resolves to no address")))?;
    if !insecure {
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(FetchError::Refused(format!(
                "{host}: resolves to {}, which is not a public address",
                a.ip()
            )));
        }
    }
    Ok(*first)
}

#[derive(Debug, Clone)]
struct Entry {
    /// When it was last fetched (or a fetch last failed).
    tried: Instant,
    /// The last document fetched, and when.
    document: Option<(Instant, serde_json::Value)>,
    /// The last failure, told again until the next fetch is allowed.
    failure: Option<FetchError>,
}

/// What to do for a URL now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Use this document.
    Use(serde_json::Value),
    /// Tell the caller this (a fetch failed less than `REFETCH_MS_MIN` ago).
    Fail(FetchError),
    /// Fetch it.
    Fetch,
}

/// The documents fetched, by URL, and when each was last tried.
#[derive(Debug, Default)]
pub struct Documents {
    entries: HashMap<String, Entry>,
}

impl Documents {
    /// `refresh`: the caller saw a key the document lacks and wants a
    /// newer one, which it gets only if the last fetch is old enough.
    pub fn decide(&self, url: &str, now: Instant, refresh: bool) -> Decision {
        let Some(e) = self.entries.get(url) else {
            return Decision::Fetch;
        };
        let may_fetch = now.saturating_duration_since(e.tried) >= Duration::from_millis(REFETCH_MS_MIN);
        match &e.document {
            Some((at, doc)) => {
                let stale = now.saturating_duration_since(*at) >= Duration::from_millis(DOCUMENT_TTL_MS);
                if may_fetch && (stale || refresh) {
                    Decision::Fetch
                } else {
                    Decision::Use(doc.clone())
                }
            }
            None if may_fetch => Decision::Fetch,
            None => Decision::Fail(
                e.failure
                    .clone()
                    .unwrap_or_else(|| FetchError::Failed("fetched too recently".into())),
            ),
        }
    }

    /// Records a fetch's outcome. A failed refetch keeps the document it
    /// had (an IdP briefly down does not stop exchanges).
    pub fn record(&mut self, url: &str, now: Instant, outcome: &Result<serde_json::Value, FetchError>) {
        if !self.entries.contains_key(url) && self.entries.len() >= DOCUMENTS_CACHED_MAX {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.tried)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let e = self.entries.entry(url.to_owned()).or_insert(Entry {
            tried: now,
            document: None,
            failure: None,
        });
        e.tried = now;
        match outcome {
            Ok(doc) => {
                e.document = Some((now, doc.clone()));
                e.failure = None;
            }
            Err(f) => e.failure = Some(f.clone()),
        }
    }
}

/// Fetches one document under the rules above.
pub async fn fetch(url: &str, insecure: bool) -> Result<serde_json::Value, FetchError> {
    let deadline = Duration::from_millis(FETCH_MS_MAX);
    tokio::time::timeout(deadline, fetch_within(url, insecure))
        .await
        .map_err(|_| FetchError::Failed(format!("{url}: not fetched within {FETCH_MS_MAX} ms")))?
}

async fn fetch_within(url: &str, insecure: bool) -> Result<serde_json::Value, FetchError> {
    let (u, host, port) = check_url(url, insecure)?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| FetchError::Failed(format!("{host}: {e}")))?
            .collect(),
    };
    let addr = choose_address(&host, &addrs, insecure)?;
    // Pinned: the connection goes to the address just checked, not to
    // whatever a second lookup would return.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .timeout(Duration::from_millis(FETCH_MS_MAX))
        .build()
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let mut r = client
        .get(u)
        .send()
        .await
        .map_err(|e| FetchError::Failed(format!("{url}: {e}")))?;
    if !r.status().is_success() {
        return Err(FetchError::Failed(format!("{url}: HTTP {}", r.status())));
    }
    if r.content_length().is_some_and(|n| n > DOCUMENT_BYTES_MAX as u64) {
        return Err(FetchError::Refused(format!(
            "{url}: a document over {DOCUMENT_BYTES_MAX} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| FetchError::Failed(format!("{url}: {e}")))?
    {
        if body.len() + chunk.len() > DOCUMENT_BYTES_MAX {
            return Err(FetchError::Refused(format!(
                "{url}: a document over {DOCUMENT_BYTES_MAX} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| FetchError::Failed(format!("{url}: not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for inward in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(inward.parse().unwrap()), "{inward}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn only_https_urls_without_credentials_pass_unless_insecure() {
        assert!(check_url("https://idp.example/jwks", false).is_ok());
        assert!(matches!(
            check_url("http://idp.example/jwks", false),
            Err(FetchError::Refused(_))
        ));
        assert!(check_url("http://idp.example/jwks", true).is_ok());
        assert!(check_url("file:///etc/passwd", true).is_err());
        assert!(check_url("https://u:p@idp.example/", false).is_err());
        let (_, host, port) = check_url("https://[::1]:8443/x", false).unwrap();
        assert_eq!((host.as_str(), port), ("::1", 8443));
    }

    #[test]
    fn a_name_resolving_to_any_inward_address_is_refused() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            choose_address("idp", &[a("1.1.1.1:443")], false),
            Ok(a("1.1.1.1:443"))
        );
        assert!(choose_address("idp", &[a("1.1.1.1:443"), a("10.0.0.1:443")], false).is_err());
        assert!(choose_address("idp", &[a("127.0.0.1:443")], true).is_ok());
        assert!(choose_address("idp", &[], true).is_err());
    }

    #[test]
    fn a_url_is_fetched_at_most_once_per_interval_whatever_asks() {
        let t0 = Instant::now();
        let mut d = Documents::default();
        let url = "https://idp.example/jwks";
        assert_eq!(d.decide(url, t0, false), Decision::Fetch);
        let doc = serde_json::json!({"keys": []});
        d.record(url, t0, &Ok(doc.clone()));
        // An unknown kid asks for a refresh: too soon, the cached one.
        let soon = t0 + Duration::from_millis(REFETCH_MS_MIN - 1);
        assert_eq!(d.decide(url, soon, true), Decision::Use(doc.clone()));
        let later = t0 + Duration::from_millis(REFETCH_MS_MIN);
        assert_eq!(d.decide(url, later, true), Decision::Fetch);
        // Without a refresh it is used until it goes stale.
        assert_eq!(d.decide(url, later, false), Decision::Use(doc.clone()));
        let stale = t0 + Duration::from_millis(DOCUMENT_TTL_MS);
        assert_eq!(d.decide(url, stale, false), Decision::Fetch);
        // A failed refetch keeps the document.
        d.record(url, stale, &Err(FetchError::Failed("down".into())));
        assert_eq!(d.decide(url, stale, false), Decision::Use(doc));
        // A URL that never answered is not tried again before its time.
        let bad = "https://bad.example/jwks";
        d.record(bad, t0, &Err(FetchError::Failed("down".into())));
        assert!(matches!(d.decide(bad, soon, false), Decision::Fail(_)));
        assert_eq!(d.decide(bad, later, false), Decision::Fetch);
    }

    #[test]
    fn the_cache_holds_at_most_its_maximum() {
        let t0 = Instant::now();
        let mut d = Documents::default();
        for i in 0..DOCUMENTS_CACHED_MAX + 5 {
            let at = t0 + Duration::from_millis(i as u64);
            d.record(
                &format!("https://idp{i}.example/"),
                at,
                &Ok(serde_json::json!({})),
            );
        }
        assert_eq!(d.entries.len(), DOCUMENTS_CACHED_MAX);
        assert!(
            !d.entries.contains_key("https://idp0.example/"),
            "the oldest went first"
        );
    }
}
