//! Tokens, sans-IO: keys and `now` in, decisions out.
//!
//! - **Upstream tokens** (an IdP's OIDC JWT) are checked against one of the
//!   tenant's [`IdpIssuer`]s: signature by a key of its JWKS, `iss` exact,
//!   `aud` one of the configured audiences, not expired.
//! - **Felix tokens** are EdDSA (Ed25519) JWTs the control plane signs
//!   with the tenant's newest key. They carry the tenant (`tid`) and the
//!   permissions (`perms`) the holder was granted, so a broker decides
//!   with the JWKS alone. Their format is `docs/format/token.md`.
//!
//! Expiry is checked against the `now` passed in, never the system clock,
//! so the rules are testable without waiting.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{IdpIssuer, SigningKey};
use crate::rbac::{Action, Grant, Object};

/// The `iss` of every Felix token.
pub const FELIX_ISSUER: &str = "felix";
/// The `aud` of every Felix token: brokers and the control plane.
pub const FELIX_AUDIENCE: &str = "felix";
/// How long a Felix token lives unless configured otherwise.
pub const TOKEN_TTL_S_DEFAULT: u64 = 900;
/// Clock difference tolerated between the token's signer and its reader.
pub const CLOCK_SKEW_S_MAX: u64 = 30;
// Longest token accepted (a JWT with a large permission set is a few KiB):
// the model's, which the wire checks too.
pub use felix_model::limits::TOKEN_BYTES_MAX;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token issuer {0:?} is not trusted by this tenant")]
    UnknownIssuer(String),
    #[error("token key {0:?} is not among the issuer's keys")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token audience is not one this issuer is trusted for")]
    WrongAudience,
    #[error("token claim {0:?} is missing or not a string")]
    MissingClaim(String),
    #[error("token is for tenant {token:?}, not {wanted:?}")]
    WrongTenant { token: String, wanted: String },
    #[error("token does not allow {action} on {object}")]
    Forbidden { action: Action, object: String },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the identity provider names group {0:?}, which is a principal's name (p:…): it would inherit that principal's grants")]
    GroupPosesAsPrincipal(String),
}

impl AuthError {
    /// Whether the right answer is 403 (the token is fine, the request is
    /// not allowed) rather than 401 (the token itself is not accepted).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::WrongTenant { .. } | AuthError::Forbidden { .. })
    }
}

/// How a principal's name begins (`p:alice`); group names never do.
pub const PRINCIPAL_PREFIX: &str = "p:";

/// A new Ed25519 signing key. `seed` is 32 random bytes from the caller
/// (the state machine holds no randomness of its own).
pub fn new_signing_key(kid: &str, seed: [u8; 32]) -> SigningKey {
    // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed 16-byte prefix, then the
    // 32-byte seed.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are a seed");
    use ring::signature::KeyPair;
    SigningKey {
        kid: kid.to_owned(),
        pkcs8: URL_SAFE_NO_PAD.encode(&der),
        public: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        created_ms: 0,
        retire_at_ms: None,
    }
}

/// What a Felix token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FelixClaims {
    pub iss: String,
    pub aud: String,
    /// The principal (`p:alice`).
    pub sub: String,
    /// The tenant it acts in.
    pub tid: String,
    pub iat: u64,
    pub exp: u64,
    pub perms: Vec<Grant>,
}

impl FelixClaims {
    /// Whether the token allows `action` on `object` (which must be in its
    /// tenant).
    pub fn check(&self, action: Action, object: &Object) -> Result<(), AuthError> {
        if object.tenant() != self.tid {
            return Err(AuthError::WrongTenant {
                token: self.tid.clone(),
                wanted: object.tenant().to_owned(),
            });
        }
        if !Grant::allows(&self.perms, action, object) {
            return Err(AuthError::Forbidden {
                action,
                object: object.to_string(),
            });
        }
        Ok(())
    }
}

/// Signs a Felix token for `sub` in `tenant` with `key`.
pub fn sign(
    key: &SigningKey,
    tenant: &str,
    sub: &str,
    perms: Vec<Grant>,
    now_s: u64,
    ttl_s: u64,
) -> Result<String, AuthError> {
    let der = URL_SAFE_NO_PAD
        .decode(&key.pkcs8)
        .map_err(|e| AuthError::Signing(e.to_string()))?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let claims = FelixClaims {
        iss: FELIX_ISSUER.into(),
        aud: FELIX_AUDIENCE.into(),
        sub: sub.into(),
        tid: tenant.into(),
        iat: now_s,
        exp: now_s + ttl_s,
        perms,
    };
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der))
        .map_err(|e| AuthError::Signing(e.to_string()))
}

fn header_of(token: &str) -> Result<Header, AuthError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(AuthError::Malformed(format!(
            "longer than {TOKEN_BYTES_MAX} bytes"
        )));
    }
    jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))
}

fn map_jwt(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthError::BadSignature,
        K::ExpiredSignature => AuthError::Expired,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidIssuer => AuthError::UnknownIssuer("(mismatch)".into()),
        K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        _ => AuthError::Malformed(e.to_string()),
    }
}

fn check_expiry(exp: Option<u64>, now_s: u64) -> Result<(), AuthError> {
    match exp {
        None => Err(AuthError::MissingClaim("exp".into())),
        Some(exp) if exp + CLOCK_SKEW_S_MAX <= now_s => Err(AuthError::Expired),
        Some(_) => Ok(()),
    }
}

/// A tenant's verification keys by `kid`, from its JWKS document.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: BTreeMap<String, String>,
}

impl Verifier {
    /// From a Felix JWKS document (`{"keys": [{"kid", "x", …}]}`).
    pub fn from_jwks(jwks: &serde_json::Value) -> Verifier {
        let keys = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .map(|ks| {
                ks.iter()
                    .filter(|k| k.get("crv").and_then(|c| c.as_str()) == Some("Ed25519"))
                    .filter_map(|k| {
                        Some((
                            k.get("kid")?.as_str()?.to_owned(),
                            k.get("x")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Verifier { keys }
    }

    pub fn from_keys(keys: &[SigningKey]) -> Verifier {
        Verifier {
            keys: keys.iter().map(|k| (k.kid.clone(), k.public.clone())).collect(),
        }
    }

    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The claims of a Felix token signed by one of these keys for
    /// `tenant`, if it is valid at `now_s`.
    pub fn verify(&self, token: &str, tenant: &str, now_s: u64) -> Result<FelixClaims, AuthError> {
        let header = header_of(token)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed(format!(
                "algorithm {:?}, expected EdDSA",
                header.alg
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let x = self.keys.get(&kid).ok_or(AuthError::UnknownKey(kid))?;
        let key = DecodingKey::from_ed_components(x).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.set_issuer(&[FELIX_ISSUER]);
        v.set_audience(&[FELIX_AUDIENCE]);
        let data = jsonwebtoken::decode::<FelixClaims>(token, &key, &v).map_err(map_jwt)?;
        check_expiry(Some(data.claims.exp), now_s)?;
        if data.claims.tid != tenant {
            return Err(AuthError::WrongTenant {
                token: data.claims.tid,
                wanted: tenant.to_owned(),
            });
        }
        Ok(data.claims)
    }
}

/// Who an upstream token says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
}

/// The `iss` of an upstream token, read without verifying it (to find
/// which issuer's keys to verify it with).
pub fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    header_of(token)?;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AuthError::Malformed("not three dot-separated parts".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| AuthError::Malformed(format!("payload: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| AuthError::Malformed(format!("payload: {e}")))?;
    v.get("iss")
        .and_then(|i| i.as_str())
        .map(String::from)
        .ok_or_else(|| AuthError::MissingClaim("iss".into()))
}

/// Verifies an upstream token against `issuer` and its keys `jwks`.
pub fn verify_upstream(
    token: &str,
    issuer: &IdpIssuer,
    jwks: &JwkSet,
    now_s: u64,
) -> Result<Identity, AuthError> {
    let header = header_of(token)?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        // A JWKS with a single key may be used without a kid.
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or_else(|| AuthError::UnknownKey(header.kid.clone().unwrap_or_default()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Malformed(format!("issuer key: {e}")))?;
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[&issuer.issuer]);
    v.set_audience(&issuer.audiences);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(map_jwt)?;
    let claims = data.claims;
    check_expiry(claims.get("exp").and_then(|e| e.as_u64()), now_s)?;
    let sub_claim = &issuer.claim_mappings.subject_claim;
    let subject = claims
        .get(sub_claim)
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::MissingClaim(sub_claim.clone()))?;
    let groups = match &issuer.claim_mappings.groups_claim {
        None => Vec::new(),
        Some(g) => match claims.get(g) {
            None => Vec::new(),
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|x| x.as_str().map(String::from)).collect()
            }
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(_) => return Err(AuthError::MissingClaim(g.clone())),
        },
    };
    // Principals are namespaced so an IdP subject cannot pose as a group,
    // and a group cannot pose as a principal: policies of `p:admin` must
    // not reach whoever the IdP puts in a group it calls `p:admin`.
    if let Some(g) = groups.iter().find(|g| g.starts_with(PRINCIPAL_PREFIX)) {
        return Err(AuthError::GroupPosesAsPrincipal(g.clone()));
    }
    Ok(Identity {
        subject: format!("{PRINCIPAL_PREFIX}{subject}"),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, b: u8) -> SigningKey {
        new_signing_key(kid, [b; 32])
    }

    fn perms(t: &str) -> Vec<Grant> {
        vec![Grant {
            action: Action::StreamPublish,
            object: format!("stream:{t}/ns/*").parse().unwrap(),
        }]
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_permissions() {
        let k = key("k1", 7);
        let t = sign(&k, "acme", "p:alice", perms("acme"), 1000, 60).unwrap();
        let v = Verifier::from_keys(std::slice::from_ref(&k));
        let c = v.verify(&t, "acme", 1010).unwrap();
        assert_eq!((c.sub.as_str(), c.tid.as_str()), ("p:alice", "acme"));
        c.check(Action::StreamPublish, &Object::stream("acme", "ns", "orders"))
            .unwrap();
        assert!(matches!(
            c.check(Action::StreamSubscribe, &Object::stream("acme", "ns", "orders")),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(matches!(
            c.check(Action::StreamPublish, &Object::stream("other", "ns", "orders")),
            Err(AuthError::WrongTenant { .. })
        ));
    }

    #[test]
    fn expired_foreign_tampered_and_unknown_key_tokens_are_refused() {
        let k = key("k1", 7);
        let v = Verifier::from_keys(std::slice::from_ref(&k));
        let t = sign(&k, "acme", "p:alice", perms("acme"), 1000, 60).unwrap();
        assert_eq!(
            v.verify(&t, "acme", 1060 + CLOCK_SKEW_S_MAX),
            Err(AuthError::Expired)
        );
        assert!(
            v.verify(&t, "acme", 1060 + CLOCK_SKEW_S_MAX - 1).is_ok(),
            "skew is tolerated"
        );
        assert!(matches!(
            v.verify(&t, "other", 1010),
            Err(AuthError::WrongTenant { .. })
        ));
        // Another key with the same kid: the signature does not match.
        let forged = sign(&key("k1", 8), "acme", "p:alice", perms("acme"), 1000, 60).unwrap();
        assert_eq!(v.verify(&forged, "acme", 1010), Err(AuthError::BadSignature));
        let unknown = sign(&key("k9", 7), "acme", "p:alice", perms("acme"), 1000, 60).unwrap();
        assert_eq!(
            v.verify(&unknown, "acme", 1010),
            Err(AuthError::UnknownKey("k9".into()))
        );
        // A changed payload with the original signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["tid"] = "other".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert_eq!(
            v.verify(&parts.join("."), "other", 1010),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            v.verify("not.a.token", "acme", 1010),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn the_jwks_document_round_trips_to_a_verifier() {
        let k = key("k1", 3);
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1", "x": k.public}]});
        let v = Verifier::from_jwks(&jwks);
        let t = sign(&k, "acme", "p:a", perms("acme"), 0, 60).unwrap();
        assert!(v.verify(&t, "acme", 10).is_ok());
        // The JWK is also readable by a generic JWKS consumer.
        let set: JwkSet = serde_json::from_value(jwks).unwrap();
        assert!(DecodingKey::from_jwk(&set.keys[0]).is_ok());
    }

    fn issuer(jwks: serde_json::Value) -> IdpIssuer {
        IdpIssuer {
            issuer: "https://idp.example".into(),
            audiences: vec!["felix-cp".into()],
            discovery_url: None,
            jwks_url: None,
            jwks: Some(jwks),
            claim_mappings: crate::model::ClaimMappings {
                subject_claim: "sub".into(),
                groups_claim: Some("groups".into()),
            },
        }
    }

    fn upstream(k: &SigningKey, claims: serde_json::Value) -> String {
        let der = URL_SAFE_NO_PAD.decode(&k.pkcs8).unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&der)).unwrap()
    }

    #[test]
    fn upstream_tokens_are_checked_for_issuer_audience_expiry_and_signature() {
        let k = key("idp1", 9);
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "idp1", "x": k.public}]});
        let iss = issuer(jwks.clone());
        let set: JwkSet = serde_json::from_value(jwks).unwrap();
        let good = serde_json::json!({"iss": "https://idp.example", "aud": "felix-cp", "sub": "alice", "exp": 2000, "groups": ["ops"]});
        let id = verify_upstream(&upstream(&k, good.clone()), &iss, &set, 1000).unwrap();
        assert_eq!(
            id,
            Identity {
                subject: "p:alice".into(),
                groups: vec!["ops".into()]
            }
        );
        assert_eq!(
            unverified_issuer(&upstream(&k, good.clone())).unwrap(),
            "https://idp.example"
        );

        // A group named as a principal is refused, not mapped.
        let mut c = good.clone();
        c["groups"] = serde_json::json!(["ops", "p:admin"]);
        assert_eq!(
            verify_upstream(&upstream(&k, c), &iss, &set, 1000),
            Err(AuthError::GroupPosesAsPrincipal("p:admin".into()))
        );

        let mut c = good.clone();
        c["aud"] = "someone-else".into();
        assert_eq!(
            verify_upstream(&upstream(&k, c), &iss, &set, 1000),
            Err(AuthError::WrongAudience)
        );
        let mut c = good.clone();
        c["iss"] = "https://evil.example".into();
        assert!(matches!(
            verify_upstream(&upstream(&k, c), &iss, &set, 1000),
            Err(AuthError::UnknownIssuer(_))
        ));
        assert_eq!(
            verify_upstream(&upstream(&k, good.clone()), &iss, &set, 3000),
            Err(AuthError::Expired)
        );
        let other = new_signing_key("idp1", [10; 32]);
        assert_eq!(
            verify_upstream(&upstream(&other, good.clone()), &iss, &set, 1000),
            Err(AuthError::BadSignature)
        );
        let mut c = good;
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verify_upstream(&upstream(&k, c), &iss, &set, 1000),
            Err(AuthError::MissingClaim("sub".into()))
        );
    }
}
