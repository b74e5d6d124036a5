//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, against a file of
//! `user:$argon2id$…` lines. Offered only inside TLS, because both mechanisms send the
//! password itself (RFC 4954 §4: a server should not offer plaintext mechanisms without it).
//!
//! The exchange is a small pure state machine ([`Exchange`]); the session does the I/O.

use crate::reply::{EnhancedCode, Reply};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    // The reason is part of the message, not a `source`: `{:#}` would print it twice.
    #[error("access.auth_users_file: cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("access.auth_users_file: {path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Hashes a password for the users file: argon2id with the crate's default parameters and a
/// random salt, as a PHC string (`$argon2id$v=19$m=…`).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => hash.to_string(),
        // Only an output-length misconfiguration can fail here, and the defaults have none.
        Err(e) => unreachable!("argon2 with default parameters failed: {e}"),
    }
}

/// The users allowed to authenticate, by name, with their PHC hash strings.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| UsersFileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Users::parse(&text).map_err(|(line, message)| UsersFileError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses the file's text; the error is the 1-based line number and what is wrong.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |m: &str| (i + 1, m.to_string());
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| fail("expected user:$argon2id$…"))?;
            if user.is_empty() || user.contains(char::is_whitespace) {
                return Err(fail("bad user name"));
            }
            let parsed =
                PasswordHash::new(hash).map_err(|e| fail(&format!("bad password hash: {e}")))?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err(fail("password hash must be argon2id"));
            }
            // A PHC string may leave out salt and hash; one that does could never verify.
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(fail("password hash lacks salt or hash"));
            }
            argon2::Params::try_from(&parsed)
                .map_err(|e| fail(&format!("bad argon2 parameters: {e}")))?;
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(fail(&format!("user {user} listed twice")));
            }
        }
        Ok(Users { hashes })
    }

    /// Checks a password. CPU-heavy by design (argon2): call it off the async threads. An
    /// unknown user costs the same as a wrong password, so timing does not reveal user names.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        ok && known
    }
}

/// An argon2id hash of a random, forgotten password, with the default parameters.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$2xzw0e2RVSq0oqFZ0RFVaQ$8vKN3N4MGNk9pzkaPMjXvnvHEpDOcWzJHsKy3Sx3f/c";

/// Where an AUTH exchange stands after the client's last word.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `334 <base64 challenge>` and read the client's response line.
    Challenge(String),
    /// The client has said who it is; verify the password.
    Credentials { user: String, password: String },
    /// The exchange ended without credentials (the reply says why).
    Failed(Reply),
}

/// One AUTH exchange.
#[derive(Debug)]
pub enum Exchange {
    Plain,
    LoginUser,
    LoginPassword { user: String },
}

fn aborted() -> Reply {
    // RFC 4954 §4: a `*` response cancels with 501.
    Reply::new(501, EnhancedCode::new(5, 7, 0), "Authentication aborted")
}

fn undecodable() -> Reply {
    Reply::new(501, EnhancedCode::new(5, 5, 2), "Cannot decode response")
}

fn decode(text: &str) -> Result<String, Reply> {
    if text == "*" {
        return Err(aborted());
    }
    // RFC 4954 §4: `=` is an empty initial response.
    if text == "=" {
        return Ok(String::new());
    }
    let bytes = BASE64.decode(text).map_err(|_| undecodable())?;
    String::from_utf8(bytes).map_err(|_| undecodable())
}

impl Exchange {
    /// Starts `AUTH mechanism [initial]`; `None` for a mechanism we do not offer.
    pub fn start(mechanism: &str, initial: Option<&str>) -> Option<(Exchange, Step)> {
        let exchange = match mechanism {
            "PLAIN" => Exchange::Plain,
            "LOGIN" => Exchange::LoginUser,
            _ => return None,
        };
        Some(match initial {
            Some(text) => {
                let mut e = exchange;
                let step = e.respond(text);
                (e, step)
            }
            // RFC 4616 §2: PLAIN's first challenge is empty; LOGIN asks "Username:".
            None => {
                let challenge = match exchange {
                    Exchange::Plain => String::new(),
                    _ => BASE64.encode("Username:"),
                };
                (exchange, Step::Challenge(challenge))
            }
        })
    }

    /// Takes the client's base64 response to the last challenge.
    pub fn respond(&mut self, text: &str) -> Step {
        let decoded = match decode(text.trim()) {
            Ok(d) => d,
            Err(reply) => return Step::Failed(reply),
        };
        match std::mem::replace(self, Exchange::Plain) {
            Exchange::Plain => plain(&decoded),
            Exchange::LoginUser => {
                *self = Exchange::LoginPassword { user: decoded };
                Step::Challenge(BASE64.encode("Password:"))
            }
            Exchange::LoginPassword { user } => Step::Credentials {
                user,
                password: decoded,
            },
        }
    }
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. We act for no one else, so an authzid
/// other than the user itself fails.
fn plain(decoded: &str) -> Step {
    let mut parts = decoded.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed(undecodable());
    };
    if !authzid.is_empty() && authzid != user {
        return Step::Failed(failed());
    }
    Step::Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }
}

/// RFC 4954 §6: 535 5.7.8 for bad credentials.
pub fn failed() -> Reply {
    Reply::new(
        535,
        EnhancedCode::new(5, 7, 8),
        "Error: authentication failed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_lines() {
        let hash = hash_password("secret");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let users = Users::parse(&format!("# users\n\nbob:{hash}\n")).unwrap();
        assert!(users.verify("bob", "secret"));
        assert!(!users.verify("bob", "Secret"));
        assert!(!users.verify("alice", "secret"));
        assert_eq!(Users::parse("bob\n").unwrap_err().0, 1);
        assert_eq!(Users::parse("# c\nbob:plain\n").unwrap_err().0, 2);
        assert_eq!(Users::parse("bob:$argon2id$nonsense").unwrap_err().0, 1);
        let no_hash = hash.rsplit_once('$').unwrap().0;
        assert!(Users::parse(&format!("bob:{no_hash}")).is_err());
        let argon2i = hash.replace("$argon2id$", "$argon2i$");
        assert!(Users::parse(&format!("bob:{argon2i}"))
            .unwrap_err()
            .1
            .contains("argon2id"));
        assert!(Users::parse(&format!("bob:{hash}\nbob:{hash}"))
            .unwrap_err()
            .1
            .contains("twice"));
    }

    #[test]
    fn dummy_hash_costs_a_real_verification() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(
            parsed.params.get_decimal("m"),
            Some(argon2::Params::DEFAULT_M_COST)
        );
    }

    #[test]
    fn load_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "\n# x\nbroken line\n").unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("users:3:"), "{e}");
        assert!(e.starts_with("access.auth_users_file"), "{e}");
    }

    fn creds(user: &str, password: &str) -> Step {
        Step::Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn plain_exchange() {
        let initial = BASE64.encode("\0bob\0pw");
        assert_eq!(
            Exchange::start("PLAIN", Some(&initial)).unwrap().1,
            creds("bob", "pw")
        );
        let (mut e, step) = Exchange::start("PLAIN", None).unwrap();
        assert_eq!(step, Step::Challenge(String::new()));
        assert_eq!(
            e.respond(&BASE64.encode("bob\0bob\0pw")),
            creds("bob", "pw")
        );
        let other = BASE64.encode("alice\0bob\0pw");
        assert!(
            matches!(Exchange::start("PLAIN", Some(&other)).unwrap().1, Step::Failed(r) if r.code == 535)
        );
        assert!(
            matches!(Exchange::start("PLAIN", Some("!!")).unwrap().1, Step::Failed(r) if r.code == 501)
        );
        assert!(
            matches!(Exchange::start("PLAIN", Some("*")).unwrap().1, Step::Failed(r) if r.code == 501)
        );
        assert!(Exchange::start("CRAM-MD5", None).is_none());
    }

    #[test]
    fn login_exchange() {
        let (mut e, step) = Exchange::start("LOGIN", None).unwrap();
        assert_eq!(step, Step::Challenge(BASE64.encode("Username:")));
        assert_eq!(
            e.respond(&BASE64.encode("bob")),
            Step::Challenge(BASE64.encode("Password:"))
        );
        assert_eq!(e.respond(&BASE64.encode("pw")), creds("bob", "pw"));
    }
}
