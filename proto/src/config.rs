//! Configuration, validated at construction.
//!
//! [`Config::default()`] carries the defaults of `behaviour.md`. Changing a
//! value goes through [`ConfigBuilder`], whose [`build`](ConfigBuilder::build)
//! rejects an inconsistent configuration with a typed [`ConfigError`] instead of
//! letting it surprise a later punch.

use core::time::Duration;

use crate::spray::SprayConfig;

/// Whether a responder admits an unsolicited `PunchIntroduce` naming a peer that
/// has not announced a reflex (requirement R4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum UnannouncedPeerPolicy {
    /// Drop it: no keep-alive is sent to an address nobody vouched for. The default.
    #[default]
    Drop,
    /// Admit it, still subject to the responder budgets (R5). For meshes whose
    /// peers predate reflex announcements.
    Admit,
}

/// Validated configuration of the traversal machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    reflex_probe_timeout: Duration,
    sweep_deadline: Duration,
    fire_lead: Duration,
    fire_lead_margin: Duration,
    punch_deadline: Duration,
    budget_window: Duration,
    coordinator_requests_per_window: u32,
    responder_trains_per_introducer: u32,
    responder_concurrent_trains: u32,
    responder_concurrent_per_introducer: u32,
    budget_table_capacity: u32,
    max_pending_punches: u32,
    max_known_peers: u32,
    unannounced_peer_policy: UnannouncedPeerPolicy,
    reclassify_interval: Duration,
    reflex_change_cooldown: Duration,
    sweep_targets: u32,
    max_pending_probes: u32,
    auto_reclassify: bool,
    natrix_extensions: bool,
    prediction_window: u16,
    spray: SprayConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reflex_probe_timeout: Duration::from_secs(3),
            sweep_deadline: Duration::from_secs(5),
            fire_lead: Duration::from_millis(500),
            fire_lead_margin: Duration::from_millis(10),
            punch_deadline: Duration::from_secs(5),
            budget_window: Duration::from_secs(10),
            coordinator_requests_per_window: 4,
            responder_trains_per_introducer: 4,
            responder_concurrent_trains: 8,
            responder_concurrent_per_introducer: 4,
            budget_table_capacity: 4096,
            max_pending_punches: 1024,
            max_known_peers: 131_072,
            unannounced_peer_policy: UnannouncedPeerPolicy::Drop,
            reclassify_interval: Duration::from_secs(60),
            reflex_change_cooldown: Duration::from_secs(30),
            sweep_targets: 4,
            max_pending_probes: 64,
            auto_reclassify: true,
            natrix_extensions: true,
            prediction_window: 8,
            spray: SprayConfig::default(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A count that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroCount(&'static str),
    /// The default fire lead is not shorter than the punch deadline: the train
    /// would start after the punch had already failed.
    #[error("fire lead {lead:?} must be shorter than the punch deadline {deadline:?}")]
    LeadNotBeforeDeadline {
        /// The configured lead.
        lead: Duration,
        /// The configured deadline.
        deadline: Duration,
    },
    /// The adaptive-lead margin exceeds the default lead.
    #[error("fire lead margin {margin:?} exceeds the fire lead {lead:?}")]
    MarginExceedsLead {
        /// The configured margin.
        margin: Duration,
        /// The configured lead.
        lead: Duration,
    },
    /// The probe timeout is longer than the sweep deadline, so no probe could
    /// ever time out inside a sweep.
    #[error("reflex probe timeout {probe:?} exceeds the sweep deadline {sweep:?}")]
    ProbeTimeoutExceedsSweep {
        /// The configured probe timeout.
        probe: Duration,
        /// The configured sweep deadline.
        sweep: Duration,
    },
    /// A sweep needs at least two destinations to classify anything (C4), and
    /// probes at most [`MAX_SWEEP_TARGETS`].
    #[error("sweep_targets is {0}; it must be between 2 and 16")]
    SweepTargets(u32),
    /// A duration beyond the supported maximum (one day): timers that long are
    /// a configuration mistake, and the bound keeps all arithmetic in range.
    #[error("{0} exceeds the maximum of one day")]
    TooLong(&'static str),
    /// N2: a birthday-punch cap beyond its maximum (sockets above
    /// [`MAX_SPRAY_SOCKETS`], a rate above [`MAX_SPRAY_RATE`] per second, or
    /// a deadline or cool-down above one day).
    #[error("spray cap {0} is beyond its maximum")]
    Spray(&'static str),
    /// N1: a prediction window above [`MAX_PREDICTION_WINDOW`] ports.
    #[error("prediction_window is {0}; it must be at most 64")]
    PredictionWindow(u16),
}

/// Most destinations one sweep probes.
pub const MAX_SWEEP_TARGETS: u32 = 16;

/// Most sockets one birthday attempt may open (N2).
pub const MAX_SPRAY_SOCKETS: u16 = 1024;
/// Highest datagram rate of one birthday attempt, per second (N2).
pub const MAX_SPRAY_RATE: u32 = 4096;

/// Most ports one prediction window covers (N1).
pub const MAX_PREDICTION_WINDOW: u16 = 64;

/// Longest duration any knob accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

impl Config {
    /// Starts from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    /// Starts from this configuration, to change some of it.
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder(self.clone())
    }

    /// How long a reflex probe waits for its answer. Default 3 s.
    #[must_use]
    pub fn reflex_probe_timeout(&self) -> Duration {
        self.reflex_probe_timeout
    }
    /// How long a classification sweep may take. Default 5 s.
    #[must_use]
    pub fn sweep_deadline(&self) -> Duration {
        self.sweep_deadline
    }
    /// Coordinator fire lead when no RTT is known (R9). Default 500 ms.
    #[must_use]
    pub fn fire_lead(&self) -> Duration {
        self.fire_lead
    }
    /// Safety margin added to half the larger RTT by the adaptive lead (R9).
    /// Default 10 ms.
    #[must_use]
    pub fn fire_lead_margin(&self) -> Duration {
        self.fire_lead_margin
    }
    /// How long a punch may take from request to confirmation. Default 5 s.
    #[must_use]
    pub fn punch_deadline(&self) -> Duration {
        self.punch_deadline
    }
    /// Length of the budget window (R5). Default 10 s.
    #[must_use]
    pub fn budget_window(&self) -> Duration {
        self.budget_window
    }
    /// `PunchRequest`s a coordinator mediates per requester per window. Default 4.
    #[must_use]
    pub fn coordinator_requests_per_window(&self) -> u32 {
        self.coordinator_requests_per_window
    }
    /// Unsolicited keep-alive trains a responder runs per introducing peer
    /// **and requester** per window (R5: one requester's requests through a
    /// coordinator spend only its own share). Default 4.
    #[must_use]
    pub fn responder_trains_per_introducer(&self) -> u32 {
        self.responder_trains_per_introducer
    }
    /// Unsolicited trains a responder runs at once for one introducing peer
    /// (R5). One requester holds at most one of them (punches are per peer),
    /// so a single requester cannot fill them. Default 4.
    #[must_use]
    pub fn responder_concurrent_per_introducer(&self) -> u32 {
        self.responder_concurrent_per_introducer
    }
    /// Concurrent unsolicited trains a responder runs, all peers. Default 8.
    #[must_use]
    pub fn responder_concurrent_trains(&self) -> u32 {
        self.responder_concurrent_trains
    }
    /// Most ids a budget table tracks at once (R5 bounded memory). Default 4096.
    #[must_use]
    pub fn budget_table_capacity(&self) -> u32 {
        self.budget_table_capacity
    }
    /// Most punches (both roles) pending at once. Default 1024.
    #[must_use]
    pub fn max_pending_punches(&self) -> u32 {
        self.max_pending_punches
    }
    /// Most peers the agent keeps session, announcement and RTT state for.
    /// Default 131 072.
    #[must_use]
    pub fn max_known_peers(&self) -> u32 {
        self.max_known_peers
    }
    /// Period of the classification sweep (C7). Default 60 s.
    #[must_use]
    pub fn reclassify_interval(&self) -> Duration {
        self.reclassify_interval
    }
    /// Least time between two sweeps triggered by a probe that saw the reflex
    /// change (C7). Default 30 s.
    #[must_use]
    pub fn reflex_change_cooldown(&self) -> Duration {
        self.reflex_change_cooldown
    }
    /// Most distinct destinations a sweep probes (at least 2 are needed, C4).
    /// Default 4.
    #[must_use]
    pub fn sweep_targets(&self) -> u32 {
        self.sweep_targets
    }
    /// Whether the agent sweeps on its own (C7: at start, periodically, and when
    /// a probe shows the reflex changed). Explicit `reclassify` works either
    /// way. Default on.
    #[must_use]
    pub fn auto_reclassify(&self) -> bool {
        self.auto_reclassify
    }
    /// Most standalone reflex probes pending at once. Default 64.
    #[must_use]
    pub fn max_pending_probes(&self) -> u32 {
        self.max_pending_probes
    }
    /// Whether the agent speaks natrix's own control channel
    /// ([`Channel::Natrix`](crate::Channel::Natrix)): a `Hello` to each peer
    /// when its session comes up, and — only toward peers whose natrix
    /// messages arrived — punch-id binding (R7) and typed responder refusals
    /// (R5). Off: only the Net v0.27 forms are ever sent. Default on.
    #[must_use]
    pub fn natrix_extensions(&self) -> bool {
        self.natrix_extensions
    }
    /// N1: how many predicted ports a keep-alive train covers when the
    /// coordinator predicts the peer's next port ([`PunchPredict`]): the
    /// prediction and the next `window − 1` ports in the peer's allocation
    /// step (the ports another mapping may have taken first), each on the
    /// introduce's IP, every tick until the peer's keep-alive arrives. 0
    /// turns prediction off. Default 8, at most [`MAX_PREDICTION_WINDOW`].
    ///
    /// [`PunchPredict`]: crate::wire::PunchPredict
    #[must_use]
    pub fn prediction_window(&self) -> u16 {
        self.prediction_window
    }
    /// N2: the caps of birthday punching ([`SprayConfig`]): a rendezvous
    /// that needs one (see [`birthday_side`](crate::behaviour::birthday_side))
    /// runs one under them. Zero sockets or probes turn it off: such pairs
    /// are skipped as before. An attempt also ends with its punch: caps whose
    /// sockets and probes take longer at `rate` than the punch deadline
    /// leave the rest unsent (the outcome says so). Default
    /// [`SprayConfig::default`].
    #[must_use]
    pub fn spray(&self) -> SprayConfig {
        self.spray
    }
    /// R4 policy for introduces naming a peer with no announced reflex.
    #[must_use]
    pub fn unannounced_peer_policy(&self) -> UnannouncedPeerPolicy {
        self.unannounced_peer_policy
    }
}

/// Builds a [`Config`]; every setter is checked by [`build`](Self::build).
#[derive(Clone, Debug)]
#[must_use]
pub struct ConfigBuilder(Config);

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty;)*) => {
        impl ConfigBuilder {
            $(
                $(#[$m])*
                pub fn $name(mut self, v: $ty) -> Self {
                    self.0.$name = v;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::reflex_probe_timeout`].
    reflex_probe_timeout: Duration;
    /// Sets [`Config::sweep_deadline`].
    sweep_deadline: Duration;
    /// Sets [`Config::fire_lead`].
    fire_lead: Duration;
    /// Sets [`Config::fire_lead_margin`].
    fire_lead_margin: Duration;
    /// Sets [`Config::punch_deadline`].
    punch_deadline: Duration;
    /// Sets [`Config::budget_window`].
    budget_window: Duration;
    /// Sets [`Config::coordinator_requests_per_window`].
    coordinator_requests_per_window: u32;
    /// Sets [`Config::responder_trains_per_introducer`].
    responder_trains_per_introducer: u32;
    /// Sets [`Config::responder_concurrent_trains`].
    responder_concurrent_trains: u32;
    /// Sets [`Config::responder_concurrent_per_introducer`].
    responder_concurrent_per_introducer: u32;
    /// Sets [`Config::budget_table_capacity`].
    budget_table_capacity: u32;
    /// Sets [`Config::max_pending_punches`].
    max_pending_punches: u32;
    /// Sets [`Config::max_known_peers`].
    max_known_peers: u32;
    /// Sets [`Config::unannounced_peer_policy`].
    unannounced_peer_policy: UnannouncedPeerPolicy;
    /// Sets [`Config::reclassify_interval`].
    reclassify_interval: Duration;
    /// Sets [`Config::reflex_change_cooldown`].
    reflex_change_cooldown: Duration;
    /// Sets [`Config::sweep_targets`].
    sweep_targets: u32;
    /// Sets [`Config::max_pending_probes`].
    max_pending_probes: u32;
    /// Sets [`Config::auto_reclassify`].
    auto_reclassify: bool;
    /// Sets [`Config::natrix_extensions`].
    natrix_extensions: bool;
    /// Sets [`Config::prediction_window`].
    prediction_window: u16;
    /// Sets [`Config::spray`].
    spray: SprayConfig;
}

impl ConfigBuilder {
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.0;
        for (name, d) in [
            ("reflex_probe_timeout", c.reflex_probe_timeout),
            ("sweep_deadline", c.sweep_deadline),
            ("fire_lead", c.fire_lead),
            ("punch_deadline", c.punch_deadline),
            ("budget_window", c.budget_window),
            ("reclassify_interval", c.reclassify_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
            if d > MAX_DURATION {
                return Err(ConfigError::TooLong(name));
            }
        }
        for (name, n) in [
            (
                "coordinator_requests_per_window",
                c.coordinator_requests_per_window,
            ),
            (
                "responder_trains_per_introducer",
                c.responder_trains_per_introducer,
            ),
            ("responder_concurrent_trains", c.responder_concurrent_trains),
            (
                "responder_concurrent_per_introducer",
                c.responder_concurrent_per_introducer,
            ),
            ("budget_table_capacity", c.budget_table_capacity),
            ("max_pending_punches", c.max_pending_punches),
            ("max_known_peers", c.max_known_peers),
            ("max_pending_probes", c.max_pending_probes),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        if !(2..=MAX_SWEEP_TARGETS).contains(&c.sweep_targets) {
            return Err(ConfigError::SweepTargets(c.sweep_targets));
        }
        if c.spray.sockets > MAX_SPRAY_SOCKETS {
            return Err(ConfigError::Spray("sockets"));
        }
        if c.spray.rate > MAX_SPRAY_RATE {
            return Err(ConfigError::Spray("rate"));
        }
        if c.spray.deadline > MAX_DURATION {
            return Err(ConfigError::Spray("deadline"));
        }
        if c.spray.cooldown > MAX_DURATION {
            return Err(ConfigError::Spray("cooldown"));
        }
        if c.prediction_window > MAX_PREDICTION_WINDOW {
            return Err(ConfigError::PredictionWindow(c.prediction_window));
        }
        if c.reflex_change_cooldown > MAX_DURATION {
            return Err(ConfigError::TooLong("reflex_change_cooldown"));
        }
        if c.fire_lead >= c.punch_deadline {
            return Err(ConfigError::LeadNotBeforeDeadline {
                lead: c.fire_lead,
                deadline: c.punch_deadline,
            });
        }
        if c.fire_lead_margin > c.fire_lead {
            return Err(ConfigError::MarginExceedsLead {
                margin: c.fire_lead_margin,
                lead: c.fire_lead,
            });
        }
        if c.reflex_probe_timeout > c.sweep_deadline {
            return Err(ConfigError::ProbeTimeoutExceedsSweep {
                probe: c.reflex_probe_timeout,
                sweep: c.sweep_deadline,
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_behaviour_md() {
        let c = Config::default();
        assert_eq!(c.reflex_probe_timeout(), Duration::from_secs(3));
        assert_eq!(c.sweep_deadline(), Duration::from_secs(5));
        assert_eq!(c.fire_lead(), Duration::from_millis(500));
        assert_eq!(c.punch_deadline(), Duration::from_secs(5));
        assert_eq!(c.budget_window(), Duration::from_secs(10));
        assert_eq!(c.coordinator_requests_per_window(), 4);
        assert_eq!(c.responder_trains_per_introducer(), 4);
        assert_eq!(c.responder_concurrent_trains(), 8);
        assert_eq!(c.unannounced_peer_policy(), UnannouncedPeerPolicy::Drop);
        assert_eq!(c.prediction_window(), 8);
        assert_eq!(Config::builder().build(), Ok(c));
    }

    #[test]
    fn invalid_configurations_are_typed_errors() {
        assert_eq!(
            Config::builder().prediction_window(65).build(),
            Err(ConfigError::PredictionWindow(65))
        );
        assert!(Config::builder().prediction_window(0).build().is_ok());
        let spray = SprayConfig::default();
        assert_eq!(
            Config::builder()
                .spray(SprayConfig {
                    sockets: 1025,
                    ..spray
                })
                .build(),
            Err(ConfigError::Spray("sockets"))
        );
        assert_eq!(
            Config::builder()
                .spray(SprayConfig {
                    rate: 5000,
                    ..spray
                })
                .build(),
            Err(ConfigError::Spray("rate"))
        );
        assert_eq!(
            Config::builder().punch_deadline(Duration::ZERO).build(),
            Err(ConfigError::ZeroDuration("punch_deadline"))
        );
        assert_eq!(
            Config::builder().fire_lead(Duration::from_secs(6)).build(),
            Err(ConfigError::LeadNotBeforeDeadline {
                lead: Duration::from_secs(6),
                deadline: Duration::from_secs(5)
            })
        );
        assert_eq!(
            Config::builder().coordinator_requests_per_window(0).build(),
            Err(ConfigError::ZeroCount("coordinator_requests_per_window"))
        );
        assert_eq!(
            Config::builder().responder_concurrent_trains(0).build(),
            Err(ConfigError::ZeroCount("responder_concurrent_trains"))
        );
        assert_eq!(
            Config::builder().budget_window(Duration::MAX).build(),
            Err(ConfigError::TooLong("budget_window"))
        );
        assert!(matches!(
            Config::builder()
                .reflex_probe_timeout(Duration::from_secs(9))
                .build(),
            Err(ConfigError::ProbeTimeoutExceedsSweep { .. })
        ));
        assert!(matches!(
            Config::builder()
                .fire_lead_margin(Duration::from_secs(1))
                .build(),
            Err(ConfigError::MarginExceedsLead { .. })
        ));
    }
}
