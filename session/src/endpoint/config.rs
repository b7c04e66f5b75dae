//! [`SessionConfig`]: every session knob, with the spec's defaults.

use std::time::Duration;

/// Session knobs. Build with [`SessionConfig::default`] and adjust the public
/// fields; [`crate::Endpoint::new`] panics on a config that fails
/// [`SessionConfig::validate`], so validate first when the values come from a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// First handshake retransmission interval; doubles on every retry (spec: 1 s).
    pub handshake_retry: Duration,
    /// Give up a handshake this long after its first attempt (spec: 5 s);
    /// also how long a responder keeps an unconfirmed (half-open) handshake.
    pub handshake_timeout: Duration,
    /// Send a keep-alive after this long without sending anything (spec: 10 s).
    pub keepalive_interval: Duration,
    /// A session is dead after this long without receiving an authenticated
    /// packet (spec: 30 s).
    pub dead_after: Duration,
    /// Rekey (a fresh handshake) when the session's keys are this old (spec: 120 s).
    /// The side that initiated the current keys rekeys at this age; the other
    /// side only at `rekey_after + handshake_timeout`, so both rarely start at once.
    pub rekey_after: Duration,
    /// Rekey after this many packets sealed with one set of keys (spec: 2^60).
    pub rekey_after_packets: u64,
    /// Keys this old are never used again; if no rekey has succeeded by then
    /// the session goes down with [`crate::DownReason::RekeyFailed`]. The
    /// previous keys (kept to open in-flight packets after a rekey) are dropped
    /// at this age too. Default 180 s.
    pub reject_after: Duration,
    /// Most peers (sessions, handshakes in progress and half-open handshakes together).
    pub max_sessions: usize,
    /// Most responder-side handshakes answered but not yet confirmed by the initiator (S5).
    pub max_half_open: usize,
    /// Handshakes per second (DH work as a responder) before cookies are
    /// demanded from initiators (S5).
    pub cookie_threshold: u32,
    /// Under load (above `cookie_threshold`, or half-open full), handshakes
    /// per second and source IP (an IPv6 source by its /64) that echo a
    /// valid cookie; beyond it their inits are dropped before any DH work
    /// (S5). Bursts of up to this many. Default 20 (WireGuard's per-IP
    /// rate): peers behind one carrier-grade NAT share an IP.
    pub handshakes_per_ip: u32,
    /// Payloads queued per peer by `send` while its handshake is in progress;
    /// the oldest is dropped (and counted) when full.
    pub queue_len: usize,
    /// A reliable message ([`crate::Endpoint::send_reliable`]) not
    /// acknowledged this long after its first transmission is given up
    /// (counted in `reliable_expired`). Default 5 s.
    pub reliable_timeout: Duration,
    /// Most reliable messages per peer sent (or waiting for the session) and
    /// not yet acknowledged; `send_reliable` refuses more with
    /// [`crate::SendError::ReliableWindowFull`]. Default 256 (a coordinator
    /// under a request flood introduces in bursts of a hundred messages to
    /// one peer), at most [`MAX_RELIABLE_WINDOW`].
    pub reliable_window: usize,
}

/// Largest [`SessionConfig::reliable_window`].
pub const MAX_RELIABLE_WINDOW: usize = 1024;

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handshake_retry: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            dead_after: Duration::from_secs(30),
            rekey_after: Duration::from_secs(120),
            rekey_after_packets: 1 << 60,
            reject_after: Duration::from_secs(180),
            max_sessions: 4096,
            max_half_open: 256,
            cookie_threshold: 64,
            handshakes_per_ip: 20,
            queue_len: 32,
            reliable_timeout: Duration::from_secs(5),
            reliable_window: 256,
        }
    }
}

/// A [`SessionConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("session config: {field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// `handshake_retry` is not shorter than `handshake_timeout` (no retry would ever happen).
    #[error(
        "session config: handshake_retry ({retry:?}) must be shorter than handshake_timeout ({timeout:?})"
    )]
    RetryNotBelowTimeout {
        /// The retry interval.
        retry: Duration,
        /// The give-up time.
        timeout: Duration,
    },
    /// `keepalive_interval` is not shorter than `dead_after`: a quiet but live
    /// peer would be declared dead.
    #[error(
        "session config: keepalive_interval ({keepalive:?}) must be shorter than dead_after ({dead:?})"
    )]
    KeepaliveNotBelowDead {
        /// The keep-alive interval.
        keepalive: Duration,
        /// The silence limit.
        dead: Duration,
    },
    /// `rekey_after + handshake_timeout` is not shorter than `reject_after`:
    /// keys would expire before the responder-side rekey could finish.
    #[error(
        "session config: rekey_after + handshake_timeout ({rekey:?}) must be shorter than reject_after ({reject:?})"
    )]
    RekeyNotBelowReject {
        /// `rekey_after + handshake_timeout`.
        rekey: Duration,
        /// The hard key lifetime.
        reject: Duration,
    },
    /// `rekey_after_packets` is zero or too close to the 2^64 nonce limit.
    #[error("session config: rekey_after_packets must be in 1..=2^63")]
    RekeyPackets,
    /// `reliable_window` is above [`MAX_RELIABLE_WINDOW`].
    #[error("session config: reliable_window ({window}) must be at most {max}")]
    ReliableWindow {
        /// The configured window.
        window: usize,
        /// [`MAX_RELIABLE_WINDOW`].
        max: usize,
    },
}

impl SessionConfig {
    /// Checks that the knobs are consistent.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, bool); 12] = [
            ("handshake_retry", self.handshake_retry.is_zero()),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("keepalive_interval", self.keepalive_interval.is_zero()),
            ("dead_after", self.dead_after.is_zero()),
            ("rekey_after", self.rekey_after.is_zero()),
            ("max_sessions", self.max_sessions == 0),
            ("max_half_open", self.max_half_open == 0),
            ("cookie_threshold", self.cookie_threshold == 0),
            ("handshakes_per_ip", self.handshakes_per_ip == 0),
            ("queue_len", self.queue_len == 0),
            ("reliable_timeout", self.reliable_timeout.is_zero()),
            ("reliable_window", self.reliable_window == 0),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError::Zero { field });
        }
        if self.handshake_retry >= self.handshake_timeout {
            return Err(ConfigError::RetryNotBelowTimeout {
                retry: self.handshake_retry,
                timeout: self.handshake_timeout,
            });
        }
        if self.keepalive_interval >= self.dead_after {
            return Err(ConfigError::KeepaliveNotBelowDead {
                keepalive: self.keepalive_interval,
                dead: self.dead_after,
            });
        }
        let rekey = self.rekey_after.saturating_add(self.handshake_timeout);
        if rekey >= self.reject_after {
            return Err(ConfigError::RekeyNotBelowReject {
                rekey,
                reject: self.reject_after,
            });
        }
        if self.rekey_after_packets == 0 || self.rekey_after_packets > 1 << 63 {
            return Err(ConfigError::RekeyPackets);
        }
        if self.reliable_window > MAX_RELIABLE_WINDOW {
            return Err(ConfigError::ReliableWindow {
                window: self.reliable_window,
                max: MAX_RELIABLE_WINDOW,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_table_and_valid() {
        let c = SessionConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.handshake_retry, Duration::from_secs(1));
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.keepalive_interval, Duration::from_secs(10));
        assert_eq!(c.dead_after, Duration::from_secs(30));
        assert_eq!(c.rekey_after, Duration::from_secs(120));
        assert_eq!(c.rekey_after_packets, 1 << 60);
        assert_eq!(c.reliable_timeout, Duration::from_secs(5));
        assert_eq!(c.reliable_window, 256);
    }

    #[test]
    fn bad_values_are_typed() {
        let c = SessionConfig {
            queue_len: 0,
            ..SessionConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "queue_len" }));
        let c = SessionConfig {
            keepalive_interval: Duration::from_secs(40),
            ..SessionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::KeepaliveNotBelowDead { .. })
        ));
        let c = SessionConfig {
            handshake_retry: Duration::from_secs(5),
            ..SessionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RetryNotBelowTimeout { .. })
        ));
        let c = SessionConfig {
            reject_after: Duration::from_secs(100),
            ..SessionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RekeyNotBelowReject { .. })
        ));
        let c = SessionConfig {
            rekey_after_packets: 0,
            ..SessionConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::RekeyPackets));
        let c = SessionConfig {
            reliable_window: MAX_RELIABLE_WINDOW + 1,
            ..SessionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ReliableWindow { .. })
        ));
        let c = SessionConfig {
            reliable_timeout: Duration::ZERO,
            ..SessionConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero {
                field: "reliable_timeout"
            })
        );
    }
}
