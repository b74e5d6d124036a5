//! A receiving server's script: what it advertises and how it answers each step.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The EHLO extensions a server advertises (RFC 5321 §4.1.1.1). The default advertises all of
/// them, as a current Postfix does; REQUIRETLS is off unless asked for.
#[derive(Clone, Debug)]
pub struct Extensions {
    pub pipelining: bool,
    /// RFC 1870; the number is the advertised limit.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 2034.
    pub enhancedstatuscodes: bool,
    /// RFC 8689; only offered after STARTTLS.
    pub requiretls: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            pipelining: true,
            size: Some(10_240_000),
            eightbitmime: true,
            dsn: true,
            smtputf8: true,
            enhancedstatuscodes: true,
            requiretls: false,
        }
    }
}

/// A receiving server's script. Replies are written as on the wire, without CRLF:
/// `"550 5.1.1 <bob@example.test>: user unknown"`. The default accepts everything.
#[derive(Clone)]
pub struct Behaviour {
    /// The banner; a non-2xx banner refuses the session (421 closes it at once).
    pub greeting: String,
    /// Wait this long before the banner (a slow server).
    pub greeting_delay: Duration,
    /// Offer STARTTLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Answer STARTTLS with this instead of 220 (e.g. `454 4.7.0 TLS not available`).
    pub starttls_reply: Option<String>,
    /// Offer STARTTLS, and after the 220 hand the connection's bytes to this TLS server (an
    /// `openssl s_server` with protocols rustls refuses): the handshake is the real OpenSSL's.
    /// The session ends with the TLS server's.
    pub tls_handoff: Option<std::net::SocketAddr>,
    pub extensions: Extensions,
    /// Answer MAIL with this instead of 250.
    pub mail_reply: Option<String>,
    /// Per recipient (lower-cased address): the RCPT reply instead of 250.
    pub rcpt_replies: HashMap<String, String>,
    /// The RCPT reply for every recipient not in `rcpt_replies`.
    pub rcpt_default: Option<String>,
    /// Accept at most this many recipients per transaction, then answer
    /// `452 4.5.3 Error: too many recipients` (RFC 5321 §4.5.3.1.10).
    pub rcpt_limit: Option<usize>,
    /// Answer the DATA command with this instead of 354.
    pub data_reply: Option<String>,
    /// The reply after the end of data instead of `250 2.0.0 Ok: queued`.
    pub end_of_data_reply: Option<String>,
    /// Close the connection without a word after the first line of message data.
    pub drop_mid_data: bool,
    /// Wait this long after the end of data before replying (a server that stalls the final
    /// reply: the client's transaction stays in flight).
    pub end_of_data_delay: Duration,
    /// Before answering MAIL, wait up to this long for the client's next command and note in
    /// the transcript whether it came (`-- pipelined after MAIL`): an RFC 2920 client sends
    /// its RCPTs without waiting; one that waits for each reply sends nothing.
    pub probe_pipelining: Option<Duration>,
    /// Sessions served at once; a connection beyond gets `421 4.7.0 Too many connections`
    /// as its greeting (Postfix's `smtpd_client_connection_count_limit`).
    pub session_limit: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            greeting: "220 mx.lab.test ESMTP lab".into(),
            greeting_delay: Duration::ZERO,
            tls: None,
            starttls_reply: None,
            tls_handoff: None,
            extensions: Extensions::default(),
            mail_reply: None,
            rcpt_replies: HashMap::new(),
            rcpt_default: None,
            rcpt_limit: None,
            data_reply: None,
            end_of_data_reply: None,
            drop_mid_data: false,
            end_of_data_delay: Duration::ZERO,
            probe_pipelining: None,
            session_limit: None,
        }
    }
}

impl Behaviour {
    /// Plain SMTP, no STARTTLS, everything accepted.
    pub fn plain() -> Behaviour {
        Behaviour::default()
    }

    /// Offers STARTTLS with a PEM certificate chain and key (e.g. from the lab CA).
    pub fn starttls(self, cert_pem: &str, key_pem: &str) -> Behaviour {
        self.tls_config(server_tls_config(cert_pem, key_pem))
    }

    /// Offers STARTTLS with a ready-made configuration (e.g. TLS 1.2 only).
    pub fn tls_config(mut self, config: Arc<rustls::ServerConfig>) -> Behaviour {
        self.tls = Some(config);
        self
    }

    /// See [`Behaviour::tls_handoff`].
    pub fn tls_handoff(mut self, tls_server: std::net::SocketAddr) -> Behaviour {
        self.tls_handoff = Some(tls_server);
        self
    }

    pub fn greeting(mut self, reply: &str) -> Behaviour {
        self.greeting = reply.into();
        self
    }

    /// See [`Behaviour::session_limit`].
    pub fn session_limit(mut self, limit: usize) -> Behaviour {
        self.session_limit = Some(limit);
        self
    }

    pub fn slow(mut self, delay: Duration) -> Behaviour {
        self.greeting_delay = delay;
        self
    }

    pub fn mail(mut self, reply: &str) -> Behaviour {
        self.mail_reply = Some(reply.into());
        self
    }

    pub fn rcpt(mut self, address: &str, reply: &str) -> Behaviour {
        self.rcpt_replies
            .insert(address.to_ascii_lowercase(), reply.into());
        self
    }

    pub fn rcpt_default(mut self, reply: &str) -> Behaviour {
        self.rcpt_default = Some(reply.into());
        self
    }

    /// At most `n` recipients per transaction; the rest get 452 4.5.3.
    pub fn rcpt_limit(mut self, n: usize) -> Behaviour {
        self.rcpt_limit = Some(n);
        self
    }

    pub fn data(mut self, reply: &str) -> Behaviour {
        self.data_reply = Some(reply.into());
        self
    }

    pub fn end_of_data(mut self, reply: &str) -> Behaviour {
        self.end_of_data_reply = Some(reply.into());
        self
    }

    pub fn drop_mid_data(mut self) -> Behaviour {
        self.drop_mid_data = true;
        self
    }

    /// Holds the reply to the end of data back for `delay` (see [`Behaviour::end_of_data_delay`]).
    /// See [`Behaviour::probe_pipelining`].
    pub fn probe_pipelining(mut self, wait: Duration) -> Behaviour {
        self.probe_pipelining = Some(wait);
        self
    }

    pub fn stall_end_of_data(mut self, delay: Duration) -> Behaviour {
        self.end_of_data_delay = delay;
        self
    }

    pub fn extensions(mut self, f: impl FnOnce(&mut Extensions)) -> Behaviour {
        f(&mut self.extensions);
        self
    }

    /// Advertises nothing but the bare EHLO line.
    pub fn no_extensions(self) -> Behaviour {
        self.extensions(|e| {
            *e = Extensions {
                pipelining: false,
                size: None,
                eightbitmime: false,
                dsn: false,
                smtputf8: false,
                enhancedstatuscodes: false,
                requiretls: false,
            }
        })
    }
}

/// A TLS 1.2/1.3 server configuration from PEM text.
pub fn server_tls_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("lab certificate PEM");
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("lab key PEM")
        .expect("a private key in the lab key PEM");
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(policy_cache::crypto::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("lab certificate and key");
    Arc::new(config)
}
