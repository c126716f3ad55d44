//! Who may do what: the Felix token a connection presented, checked at
//! the handshake against its tenant's keys, and the permission each
//! request needs. Keys come from the control plane's feed and are held
//! here, so checking a token never waits for the control plane unless the
//! token names a key this broker has not seen (a rotation it has not
//! heard of yet), and then at most once per [`KEY_REFETCH_MS_MIN`].

use std::collections::HashMap;
use std::sync::RwLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use felix_client::wire::Message;
use felix_controlplane::auth::{AuthError, FelixClaims, Verifier};
use felix_controlplane::rbac::{Action, Object};

use crate::error::BrokerError;
use crate::names::StreamName;

/// Shortest time between two fetches of one tenant's keys on an unknown
/// `kid`, so a stream of forged tokens cannot turn into a stream of
/// control-plane requests.
pub const KEY_REFETCH_MS_MIN: i64 = 1_000;
/// Shortest time between two key fetches of any tenants: tokens naming
/// ever new tenants cannot make more than 20 control-plane requests a
/// second either.
pub const KEY_FETCH_GAP_MS_MIN: i64 = 50;
/// Tenants whose keys are held.
pub const TENANTS_MAX: usize = 100_000;

/// An authenticated connection's principal.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: FelixClaims,
    /// The token itself, passed on when an admin request is forwarded to
    /// the control plane (which checks it again).
    pub token: String,
}

impl Principal {
    /// Whether the token allows `action` on `object`, and is still valid
    /// at `now_s`: a connection outliving its token is refused from then
    /// on, and the client reconnects with a fresh one.
    pub fn check(&self, action: Action, object: &Object, now_s: u64) -> Result<(), BrokerError> {
        if self.claims.exp + felix_controlplane::auth::CLOCK_SKEW_S_MAX <= now_s {
            return Err(BrokerError::Unauthorized(
                "the connection's token has expired; reconnect with a fresh one".into(),
            ));
        }
        self.claims.check(action, object).map_err(refusal)
    }

    pub fn tenant(&self) -> &str {
        &self.claims.tid
    }
}

/// Each tenant's verification keys, as the feed last gave them.
#[derive(Debug, Default)]
pub struct Keys {
    tenants: RwLock<HashMap<String, TenantKeys>>,
    /// When any tenant's keys were last fetched.
    last_fetch_ms: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Clone, Default)]
struct TenantKeys {
    verifier: Verifier,
    fetched_ms: i64,
}

/// What checking a token found.
#[derive(Debug)]
pub enum Checked {
    Valid(FelixClaims),
    /// Signed with a key this broker does not hold for `tenant`: fetch the
    /// tenant's keys and check again.
    UnknownKey {
        tenant: String,
    },
}

impl Keys {
    /// Replaces a tenant's keys with those of a JWKS document.
    pub fn set(&self, tenant: &str, jwks: &serde_json::Value, now_ms: i64) {
        let mut t = self.tenants.write().expect("keys lock");
        if t.len() >= TENANTS_MAX && !t.contains_key(tenant) {
            tracing::warn!("keys of {TENANTS_MAX} tenants held already; tenant {tenant}'s are not");
            return;
        }
        t.insert(
            tenant.to_owned(),
            TenantKeys {
                verifier: Verifier::from_jwks(jwks),
                fetched_ms: now_ms,
            },
        );
    }

    /// Forgets a deleted tenant's keys.
    pub fn remove(&self, tenant: &str) {
        self.tenants.write().expect("keys lock").remove(tenant);
    }

    /// Whether a tenant's keys may be fetched again now.
    pub fn may_refetch(&self, tenant: &str, now_ms: i64) -> bool {
        let last = self.last_fetch_ms.load(std::sync::atomic::Ordering::Acquire);
        if last != 0 && now_ms - last < KEY_FETCH_GAP_MS_MIN {
            return false;
        }
        self.tenants
            .read()
            .expect("keys lock")
            .get(tenant)
            .is_none_or(|k| now_ms - k.fetched_ms >= KEY_REFETCH_MS_MIN)
    }

    /// Notes a fetch attempt, so a failing control plane is not asked on
    /// every handshake either.
    pub fn note_fetch(&self, tenant: &str, now_ms: i64) {
        self.last_fetch_ms
            .store(now_ms, std::sync::atomic::Ordering::Release);
        let mut t = self.tenants.write().expect("keys lock");
        if let Some(k) = t.get_mut(tenant) {
            k.fetched_ms = now_ms;
        } else if t.len() < TENANTS_MAX {
            t.insert(
                tenant.to_owned(),
                TenantKeys {
                    verifier: Verifier::default(),
                    fetched_ms: now_ms,
                },
            );
        }
    }

    /// Checks a token presented at the handshake.
    pub fn check(&self, token: &str, now_ms: i64) -> Result<Checked, BrokerError> {
        if token.is_empty() {
            return Err(BrokerError::Unauthorized(
                "this broker requires a Felix token (from the control plane's token exchange)".into(),
            ));
        }
        let tenant = unverified_tenant(token)?;
        let t = self.tenants.read().expect("keys lock");
        let Some(keys) = t.get(&tenant) else {
            return Ok(Checked::UnknownKey { tenant });
        };
        let now_s = u64::try_from(now_ms / 1000).unwrap_or(0);
        match keys.verifier.verify(token, &tenant, now_s) {
            Ok(c) => Ok(Checked::Valid(c)),
            Err(AuthError::UnknownKey(_)) => Ok(Checked::UnknownKey { tenant }),
            Err(e) => Err(refusal(e)),
        }
    }
}

/// The tenant a token claims, read before its signature is checked (to
/// pick the keys that check it; nothing else is trusted from it).
fn unverified_tenant(token: &str) -> Result<String, BrokerError> {
    let bad = |why: &str| BrokerError::Unauthorized(format!("malformed token: {why}"));
    if token.len() > felix_controlplane::auth::TOKEN_BYTES_MAX {
        return Err(bad("too long"));
    }
    let payload = token.split('.').nth(1).ok_or_else(|| bad("not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad("payload is not base64url"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad("payload is not JSON"))?;
    let tid = v
        .get("tid")
        .and_then(|t| t.as_str())
        .ok_or_else(|| bad("no tenant (tid) claim"))?;
    if felix_model::names::name_problem(tid).is_some() {
        return Err(bad("invalid tenant name"));
    }
    Ok(tid.to_owned())
}

fn refusal(e: AuthError) -> BrokerError {
    if e.is_forbidden() {
        BrokerError::Forbidden(e.to_string())
    } else {
        BrokerError::Unauthorized(e.to_string())
    }
}

/// The permission a request needs and the object it is needed on; `None`
/// for requests any authenticated connection may make (metadata, whose
/// answer is filtered to the caller's tenant instead).
///
/// The resource's own kind (`kind_of`, from this broker's metadata)
/// decides which permissions guard it, whichever operation names it: a
/// publish to a cache needs `cache.write` on the cache, a cache put on a
/// compacted stream `stream.publish` on the stream. Otherwise a grant on
/// streams would read and write caches of the same name pattern, and the
/// reverse.
pub fn required(
    request: &Message,
    kind_of: impl Fn(&str) -> Option<crate::meta::StreamKind>,
) -> Result<Option<(Action, Object)>, BrokerError> {
    use crate::meta::StreamKind;
    /// What a request does to its resource, whatever the resource is.
    enum Use {
        Write,
        Read,
        Consume,
        Manage,
    }
    let (name, used, names_cache) = match request {
        Message::Publish { stream: n, .. } => (n, Use::Write, false),
        Message::Subscribe { stream: n, .. }
        | Message::CommitCursor { stream: n, .. }
        | Message::StreamDescribe { name: n } => (n, Use::Read, false),
        Message::GroupFetch { stream: n, .. }
        | Message::GroupAck { stream: n, .. }
        | Message::GroupNack { stream: n, .. }
        | Message::GroupExtend { stream: n, .. } => (n, Use::Consume, false),
        Message::CacheGet { cache: n, .. } | Message::CacheScan { cache: n, .. } => (n, Use::Read, true),
        Message::CachePut { cache: n, .. } | Message::CacheDelete { cache: n, .. } => (n, Use::Write, true),
        Message::StreamCreate(c) => (&c.name, Use::Manage, c.kind == StreamKind::Cache),
        Message::StreamDelete { name, .. } | Message::StreamSetRetention { name, .. } => {
            (name, Use::Manage, false)
        }
        Message::Metadata { .. } => return Ok(None),
        // Anything else is refused by the handler as not a request.
        _ => return Ok(None),
    };
    let s = StreamName::parse(name)?;
    // A resource being created has no kind yet but the one asked for; an
    // unknown one is refused later as unknown, after this check.
    let is_cache = match request {
        Message::StreamCreate(_) => names_cache,
        _ => kind_of(name).map_or(names_cache, |k| k == StreamKind::Cache),
    };
    let action = match (used, is_cache) {
        (Use::Write, true) => Action::CacheWrite,
        (Use::Write, false) => Action::StreamPublish,
        (Use::Read | Use::Consume, true) => Action::CacheRead,
        (Use::Read, false) => Action::StreamSubscribe,
        (Use::Consume, false) => Action::StreamConsume,
        (Use::Manage, _) => Action::ResourceManage,
    };
    let object = match is_cache {
        true => Object::cache(&s.tenant, &s.namespace, &s.name),
        false => Object::stream(&s.tenant, &s.namespace, &s.name),
    };
    Ok(Some((action, object)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use felix_controlplane::auth::{new_signing_key, sign};
    use felix_controlplane::rbac::Grant;

    fn grant(action: &str, object: &str) -> Grant {
        serde_json::from_value(serde_json::json!({"action": action, "object": object})).unwrap()
    }

    #[test]
    fn tokens_are_checked_against_their_tenants_keys() {
        let ka = new_signing_key("a1", [1; 32]);
        let kb = new_signing_key("b1", [2; 32]);
        let keys = Keys::default();
        let jwks = |k: &felix_controlplane::model::SigningKey| serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": k.kid, "x": k.public}]});
        keys.set("a", &jwks(&ka), 0);
        keys.set("b", &jwks(&kb), 0);
        let now_s = 1_000_000;
        let perms = vec![grant("stream.publish", "stream:a/prod/orders")];
        let t = sign(&ka, "a", "p:alice", perms, now_s, 900).unwrap();
        let Checked::Valid(c) = keys.check(&t, now_s as i64 * 1000).unwrap() else {
            panic!("valid token not accepted")
        };
        let p = Principal {
            claims: c,
            token: t.clone(),
        };
        p.check(
            Action::StreamPublish,
            &Object::stream("a", "prod", "orders"),
            now_s,
        )
        .unwrap();
        assert!(matches!(
            p.check(
                Action::StreamSubscribe,
                &Object::stream("a", "prod", "orders"),
                now_s
            ),
            Err(BrokerError::Forbidden(_))
        ));
        assert!(p
            .check(
                Action::StreamPublish,
                &Object::stream("b", "prod", "orders"),
                now_s
            )
            .is_err());
        // Expired by the time of a later request.
        assert!(matches!(
            p.check(
                Action::StreamPublish,
                &Object::stream("a", "prod", "orders"),
                now_s + 2_000
            ),
            Err(BrokerError::Unauthorized(_))
        ));
        // Expired at the handshake.
        assert!(keys.check(&t, (now_s as i64 + 2_000) * 1000).is_err());
        // Signed with b's key but claiming a: b's key is not a's.
        let forged = sign(&kb, "a", "p:mallory", vec![], now_s, 900).unwrap();
        assert!(matches!(
            keys.check(&forged, now_s as i64 * 1000).unwrap(),
            Checked::UnknownKey { .. }
        ));
        // A key id that is a's but a signature that is not.
        let kb_as_a1 = new_signing_key("a1", [2; 32]);
        let forged = sign(&kb_as_a1, "a", "p:mallory", vec![], now_s, 900).unwrap();
        assert!(matches!(
            keys.check(&forged, now_s as i64 * 1000),
            Err(BrokerError::Unauthorized(_))
        ));
        // No token, garbage, an unknown tenant.
        assert!(keys.check("", 0).is_err());
        assert!(keys.check("not.a.jwt", 0).is_err());
        let kc = new_signing_key("c1", [3; 32]);
        let t = sign(&kc, "c", "p:carol", vec![], now_s, 900).unwrap();
        assert!(matches!(
            keys.check(&t, now_s as i64 * 1000).unwrap(),
            Checked::UnknownKey { tenant } if tenant == "c"
        ));
        assert!(keys.may_refetch("c", 1));
        keys.note_fetch("c", 1);
        assert!(!keys.may_refetch("c", 10));
        assert!(keys.may_refetch("c", 1 + KEY_REFETCH_MS_MIN));
        // Any tenant: not within the global gap.
        assert!(!keys.may_refetch("d", 1 + KEY_FETCH_GAP_MS_MIN - 1));
        assert!(keys.may_refetch("d", 1 + KEY_FETCH_GAP_MS_MIN));
    }

    #[test]
    fn a_tenants_own_key_does_not_make_a_wrong_issuer_audience_or_expiry_valid() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let k = new_signing_key("a1", [1; 32]);
        let keys = Keys::default();
        let jwks =
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": k.kid, "x": k.public}]});
        keys.set("a", &jwks, 0);
        let der = URL_SAFE_NO_PAD.decode(&k.pkcs8).unwrap();
        let now_s: u64 = 1_000_000;
        let token = |iss: &str, aud: &str, exp: u64| {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            h.kid = Some("a1".into());
            let claims = serde_json::json!({"iss": iss, "aud": aud, "sub": "p:x", "tid": "a",
                                            "iat": now_s, "exp": exp, "perms": []});
            jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ed_der(&der)).unwrap()
        };
        let now_ms = now_s as i64 * 1000;
        assert!(matches!(
            keys.check(&token("felix", "felix", now_s + 60), now_ms).unwrap(),
            Checked::Valid(_)
        ));
        for (what, t) in [
            ("wrong issuer", token("https://idp.example", "felix", now_s + 60)),
            ("wrong audience", token("felix", "someone-else", now_s + 60)),
            ("expired past the skew", token("felix", "felix", now_s - 31)),
        ] {
            let e = keys.check(&t, now_ms).err();
            assert!(matches!(e, Some(BrokerError::Unauthorized(_))), "{what}: {e:?}");
        }
    }

    #[test]
    fn each_request_needs_its_permission_on_its_object() {
        use bytes::Bytes;
        let publish = Message::Publish {
            stream: "acme/prod/orders".into(),
            shard: None,
            ack: felix_client::wire::AckLevel::Leader,
            producer_id: 0,
            sequence: 0,
            batch: Bytes::new(),
        };
        let none = |_: &str| None;
        let (a, o) = required(&publish, none).unwrap().unwrap();
        assert_eq!(a, Action::StreamPublish);
        assert_eq!(o, Object::stream("acme", "prod", "orders"));
        let get = Message::CacheGet {
            cache: "sessions".into(),
            key: Bytes::from_static(b"k"),
        };
        let (a, o) = required(&get, none).unwrap().unwrap();
        assert_eq!(a, Action::CacheRead);
        assert_eq!(o, Object::cache("dev", "default", "sessions"));
        // Walking the keys reads the cache.
        let scan = Message::CacheScan {
            cache: "sessions".into(),
            shard: 0,
            after: None,
            count: 10,
        };
        let (a, o) = required(&scan, none).unwrap().unwrap();
        assert_eq!(a, Action::CacheRead);
        assert_eq!(o, Object::cache("dev", "default", "sessions"));
        assert!(required(&Message::Metadata { streams: vec![] }, none)
            .unwrap()
            .is_none());
        assert!(required(
            &Message::StreamDelete {
                name: "a/b".into(),
                force: false
            },
            none
        )
        .is_err());
    }

    #[test]
    fn the_resources_kind_decides_its_permissions_whichever_operation_names_it() {
        use crate::meta::StreamKind;
        use bytes::Bytes;
        let kinds = |n: &str| match n {
            "acme/prod/sessions" => Some(StreamKind::Cache),
            "acme/prod/table" => Some(StreamKind::Compacted),
            _ => None,
        };
        let publish = |n: &str| Message::Publish {
            stream: n.into(),
            shard: None,
            ack: felix_client::wire::AckLevel::Leader,
            producer_id: 0,
            sequence: 0,
            batch: Bytes::new(),
        };
        let subscribe_to_cache = Message::Subscribe {
            stream: "acme/prod/sessions".into(),
            shards: vec![],
            start: felix_client::wire::Start::Earliest,
            durable: None,
            credit_bytes: 0,
        };
        let put_to_stream = Message::CachePut {
            cache: "acme/prod/table".into(),
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ttl_ms: None,
            if_version: None,
            writer: 0,
            sequence: 0,
        };
        let cache = Object::cache("acme", "prod", "sessions");
        let table = Object::stream("acme", "prod", "table");
        for (m, want) in [
            (publish("acme/prod/sessions"), (Action::CacheWrite, cache.clone())),
            (subscribe_to_cache, (Action::CacheRead, cache.clone())),
            (put_to_stream, (Action::StreamPublish, table.clone())),
            (publish("acme/prod/table"), (Action::StreamPublish, table.clone())),
        ] {
            assert_eq!(required(&m, kinds).unwrap().unwrap(), want, "{m:?}");
        }
        // So a token allowed to publish and subscribe to every stream of
        // the namespace, and nothing else, neither writes nor reads the
        // cache, and a cache writer does not write the compacted stream.
        let key = new_signing_key("a1", [1; 32]);
        let keys = Keys::default();
        let jwks =
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": key.kid, "x": key.public}]});
        keys.set("acme", &jwks, 0);
        let now_s = 1_000_000;
        let perms = vec![
            grant("stream.publish", "stream:acme/prod/*"),
            grant("stream.subscribe", "stream:acme/prod/*"),
        ];
        let t = sign(&key, "acme", "p:streams", perms, now_s, 900).unwrap();
        let Checked::Valid(c) = keys.check(&t, now_s as i64 * 1000).unwrap() else {
            panic!("valid token not accepted")
        };
        let p = Principal { claims: c, token: t };
        let (a, o) = required(&publish("acme/prod/sessions"), kinds).unwrap().unwrap();
        assert!(p.check(a, &o, now_s).is_err());
        let (a, o) = required(
            &Message::CacheGet {
                cache: "acme/prod/sessions".into(),
                key: Bytes::new(),
            },
            kinds,
        )
        .unwrap()
        .unwrap();
        assert!(p.check(a, &o, now_s).is_err());
        let (a, o) = required(&publish("acme/prod/orders"), kinds).unwrap().unwrap();
        assert!(
            p.check(a, &o, now_s).is_ok(),
            "the control: a stream is still written"
        );
    }
}
