//! The SASL exchange, sans-IO: which mechanisms a client may pick, and the
//! Felix token each one carries (`docs/kafka.md`, "Authentication").
//!
//! - PLAIN: `authzid NUL username NUL password`; the password is the
//!   token, the names are not checked (the token says who it is).
//! - OAUTHBEARER (RFC 7628): the initial response's `auth=Bearer <token>`.

use bytes::Bytes;

/// Mechanisms offered, in the order the handshake lists them.
pub const MECHANISMS: &[&str] = &["PLAIN", "OAUTHBEARER"];

/// The token in a client's `auth_bytes` for `mechanism`.
pub fn token_of(mechanism: &str, auth: &[u8]) -> Result<Bytes, &'static str> {
    match mechanism {
        "PLAIN" => {
            let mut parts = auth.splitn(3, |&b| b == 0);
            let (Some(_authzid), Some(_user), Some(password)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("PLAIN expects authzid NUL username NUL password");
            };
            if password.is_empty() {
                return Err("PLAIN: the password (a Felix token) is empty");
            }
            Ok(Bytes::copy_from_slice(password))
        }
        "OAUTHBEARER" => {
            // gs2-header "n,[a=authzid]," then key=value pairs, each
            // ended by 0x01, the list ended by another.
            let Some(first) = auth.iter().position(|&b| b == 0x01) else {
                return Err("OAUTHBEARER: no key/value pairs after the GS2 header");
            };
            if !auth.starts_with(b"n,") && !auth.starts_with(b"y,") {
                return Err(
                    "OAUTHBEARER: the GS2 header must start n, or y, (channel binding is not offered)",
                );
            }
            for kv in auth[first + 1..].split(|&b| b == 0x01) {
                if let Some(v) = kv.strip_prefix(b"auth=") {
                    let Some(token) = v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer "))
                    else {
                        return Err("OAUTHBEARER: auth= must be `Bearer <token>`");
                    };
                    if token.is_empty() {
                        return Err("OAUTHBEARER: the bearer token is empty");
                    }
                    return Ok(Bytes::copy_from_slice(token));
                }
            }
            Err("OAUTHBEARER: no auth= pair")
        }
        _ => Err("mechanism not offered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_carries_the_token_as_its_password() {
        assert_eq!(
            token_of("PLAIN", b"\0dev\0tok.en").unwrap(),
            Bytes::from_static(b"tok.en")
        );
        // A password may hold anything but NUL comes after the second.
        assert_eq!(
            token_of("PLAIN", b"z\0u\0a\0b").unwrap(),
            Bytes::from_static(b"a\0b")
        );
        assert!(token_of("PLAIN", b"\0dev").is_err());
        assert!(token_of("PLAIN", b"\0dev\0").is_err());
    }

    #[test]
    fn oauthbearer_carries_it_as_the_bearer() {
        let m = b"n,,\x01host=h\x01auth=Bearer abc.def\x01\x01";
        assert_eq!(
            token_of("OAUTHBEARER", m).unwrap(),
            Bytes::from_static(b"abc.def")
        );
        assert!(token_of("OAUTHBEARER", b"n,,\x01auth=Basic x\x01\x01").is_err());
        assert!(token_of("OAUTHBEARER", b"p=tls-unique,,\x01auth=Bearer x\x01\x01").is_err());
        assert!(token_of("OAUTHBEARER", b"n,,\x01\x01").is_err());
        assert!(token_of("GSSAPI", b"").is_err());
    }
}
