//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms:
//! decoding the client's responses and checking the credentials.
//!
//! Owns: the mechanisms offered, the base64 of the exchange, and the user
//! table (`--auth-users FILE`: `user:password` per line). Without a table
//! any credentials are accepted, as a sink should: it stands in for a
//! server whose users it does not know. Pure: the file is read elsewhere.
//! CRAM-MD5 is not offered (it needs passwords kept in the clear on both
//! sides and an MD5 implementation for a mechanism RFC 8314 era clients no
//! longer choose).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::collections::HashMap;

/// The EHLO keyword and its mechanisms.
pub const KEYWORD: &str = "AUTH PLAIN LOGIN";

/// `334` challenges of LOGIN: base64 of `Username:` and `Password:`.
pub const LOGIN_USER: &[u8] = b"334 VXNlcm5hbWU6\r\n";
/// See [`LOGIN_USER`].
pub const LOGIN_PASSWORD: &[u8] = b"334 UGFzc3dvcmQ6\r\n";
/// The empty challenge of PLAIN without an initial response.
pub const PLAIN_READY: &[u8] = b"334 \r\n";

/// Longest line of an AUTH exchange, CRLF included (RFC 4954 4).
pub const MAX_LINE: usize = 12_288;

/// A mechanism we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN (draft-murchison-sasl-login).
    Login,
}

impl Mechanism {
    /// The mechanism named `name` (any case), if offered.
    pub fn named(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(b"PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case(b"LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// Who may log in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    table: Option<HashMap<Vec<u8>, Vec<u8>>>,
}

/// Anyone, with any password.
pub const ANYONE: Users = Users { table: None };

impl Users {
    /// Anyone, with any password.
    pub fn anyone() -> Self {
        ANYONE
    }

    /// The users of a file's text: `user:password` per line (the password
    /// is everything after the first `:`); blank lines and lines starting
    /// with `#` are skipped. Errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut table = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:password", n + 1));
            };
            if user.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            table.insert(user.as_bytes().to_vec(), password.as_bytes().to_vec());
        }
        Ok(Self { table: Some(table) })
    }

    /// Whether `user` with `password` may log in.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        match &self.table {
            None => true,
            Some(t) => t.get(user).is_some_and(|p| p == password),
        }
    }
}

/// A client's response, decoded; `None` when it is not base64. `=` is the
/// empty response of an initial-response (RFC 4954 4).
pub fn decode(response: &[u8]) -> Option<Vec<u8>> {
    if response == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(response).ok()
}

/// A PLAIN message (`[authzid] NUL authcid NUL passwd`), checked: `None`
/// when malformed, else whether the credentials pass. An authorization
/// identity other than the user's own is refused (we know no proxy rights).
pub fn plain(message: &[u8], users: &Users) -> Option<bool> {
    let mut parts = message.split(|&b| b == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some((authzid.is_empty() || authzid == user) && users.check(user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let any = Users::anyone();
        let some = Users::parse("# users\nalice:s3cret\n\nbob:pa:ss\n").unwrap();
        assert_eq!(plain(b"\0alice\0s3cret", &some), Some(true));
        assert_eq!(plain(b"alice\0alice\0s3cret", &some), Some(true));
        assert_eq!(plain(b"\0alice\0wrong", &some), Some(false));
        assert_eq!(plain(b"\0bob\0pa:ss", &some), Some(true));
        assert_eq!(plain(b"carol\0alice\0s3cret", &some), Some(false));
        assert_eq!(plain(b"\0mallory\0x", &any), Some(true));
        for bad in [&b"alice"[..], b"\0alice", b"\0\0pw", b"a\0b\0c\0d"] {
            assert_eq!(plain(bad, &any), None, "{bad:?}");
        }
    }

    #[test]
    fn users_file_errors_name_the_line() {
        assert_eq!(
            Users::parse("a:b\nnocolon\n"),
            Err("line 2: expected user:password".into())
        );
        assert_eq!(Users::parse(":pw\n"), Err("line 1: empty user name".into()));
    }

    #[test]
    fn responses() {
        assert_eq!(decode(b"="), Some(vec![]));
        assert_eq!(
            decode(b"AGFsaWNlAHMzY3JldA=="),
            Some(b"\0alice\0s3cret".to_vec())
        );
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(Mechanism::named(b"plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::named(b"CRAM-MD5"), None);
    }
}
