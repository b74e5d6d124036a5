//! The one crypto provider of the whole program: rustls's aws-lc-rs provider, whose key
//! exchange offers the post-quantum hybrid X25519MLKEM768 first (ring has no ML-KEM). Every
//! rustls configuration, signature check and digest goes through it, in this crate and in
//! mxguard, so that no second provider is ever linked in.

pub use aws_lc_rs::digest;
pub use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group, ALL_CIPHER_SUITES, ALL_KX_GROUPS};

/// The provider with its default suites and groups.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Makes [`provider`] the process-wide default: reqwest, built without a provider of its own,
/// panics without one. A second call is harmless.
pub fn install_default() {
    let _ = provider().install_default();
}
