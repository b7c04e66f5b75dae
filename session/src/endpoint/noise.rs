//! snow glue: the Noise pattern, and a `CryptoResolver` whose RNG is ours.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// The Noise prologue: binds handshakes to this protocol and version.
pub const NOISE_PROLOGUE: &[u8] = b"natrix/session/v1";

/// The parsed pattern.
pub(crate) fn params() -> NoiseParams {
    // The pattern is a constant known to snow; parsing cannot fail.
    NOISE_PATTERN
        .parse()
        .expect("snow knows Noise_IK_25519_ChaChaPoly_BLAKE2s")
}

/// snow's random source for one handshake: a ChaCha20 stream seeded from the
/// endpoint's CSPRNG (so a fixed endpoint seed gives byte-identical handshakes).
struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// Delegates everything to snow's `DefaultResolver` except the RNG.
pub(crate) struct SeededResolver {
    seed: [u8; 32],
}

impl SeededResolver {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        SeededResolver { seed }
    }
}

impl Drop for SeededResolver {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A snow builder for one handshake with its RNG seeded by `seed`.
pub(crate) fn builder<'a>(params: &NoiseParams, seed: [u8; 32]) -> snow::Builder<'a> {
    snow::Builder::with_resolver(params.clone(), Box::new(SeededResolver::new(seed)))
}
