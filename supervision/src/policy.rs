//! Policies: how a supervisor restarts, and how one child is treated.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which children restart when one fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Only the failed child.
    #[default]
    OneForOne,
    /// Every child: the others are stopped (last started first), then all start again in order.
    OneForAll,
    /// The failed child and those started after it.
    RestForOne,
}

/// Whether a child that ended is restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartType {
    /// Always.
    #[default]
    Permanent,
    /// Only if it failed (a normal stop is final).
    Transient,
    /// Never.
    Temporary,
}

/// At most `max_restarts` restarts within `within`; one more and the supervisor gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Intensity {
    /// Restarts allowed in the window.
    pub max_restarts: u32,
    /// The window.
    pub within: Duration,
}

impl Default for Intensity {
    /// OTP's default: 3 restarts in 5 seconds.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            within: Duration::from_secs(5),
        }
    }
}

impl Intensity {
    /// The default budget of a node's root supervisor: 100 restarts in 10 seconds. Past it the
    /// root gives up and every agent of the node stops, so it is set well above what one
    /// agent's own budget (default 3 in 5 s) allows.
    pub fn node_root() -> Self {
        Self {
            max_restarts: 100,
            within: Duration::from_secs(10),
        }
    }
}

/// Exponential restart delay: `min`, doubling per consecutive failure up to `max`, with a
/// random spread of ±`jitter` (a fraction), back to `min` after `reset_after` without failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// First delay (zero: restart at once).
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Quiet time after which the delay starts again from `min`.
    pub reset_after: Duration,
    /// Spread, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(50),
            max: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// No delay at all.
    pub fn none() -> Self {
        Self {
            min: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// The delay before restart number `n` (1 = first after a quiet period); `rand01` is a
    /// uniform number in [0, 1).
    pub fn delay(&self, n: u32, rand01: f64) -> Duration {
        if self.max.is_zero() {
            return Duration::ZERO;
        }
        let exp = self.min.saturating_mul(1u32 << n.saturating_sub(1).min(20));
        let base = exp.min(self.max).max(self.min);
        let spread = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * rand01.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(spread.max(0.0)).min(self.max)
    }
}

/// Everything about how one agent is supervised, chosen at spawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AgentPolicy {
    /// Restart type.
    pub restart: RestartType,
    /// The agent's own restart budget; past it the agent is given up (stays failed).
    pub intensity: Intensity,
    /// Delay between restarts.
    pub backoff: Backoff,
    /// A handler running longer than this fails the agent (None: no deadline).
    pub handler_timeout: Option<Duration>,
    /// `init` must finish within this.
    pub start_timeout: Duration,
    /// A stopping agent gets this long, then it is killed.
    pub shutdown_timeout: Duration,
}

impl Default for AgentPolicy {
    fn default() -> Self {
        Self {
            restart: RestartType::Permanent,
            intensity: Intensity::default(),
            backoff: Backoff::default(),
            handler_timeout: None,
            start_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// An [`AgentPolicy`] as kept for each agent: nothing when it is the default (most agents),
/// a box otherwise, so that a supervisor or a directory with many agents does not hold a
/// copy of the same 136 bytes per agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredPolicy(Option<Box<AgentPolicy>>);

impl From<AgentPolicy> for StoredPolicy {
    fn from(p: AgentPolicy) -> Self {
        if p == AgentPolicy::default() {
            Self(None)
        } else {
            Self(Some(Box::new(p)))
        }
    }
}

impl StoredPolicy {
    /// The policy.
    pub fn get(&self) -> AgentPolicy {
        self.0.as_deref().copied().unwrap_or_default()
    }
}

/// Why a policy value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// Parses `500ms`, `3s`, `2m` (or `0`).
///
/// # Errors
/// [`ParseError`] naming the text.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| ParseError(format!("{s:?} needs a unit: ms, s or m")))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| ParseError(format!("{s:?} is not a duration")))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(ParseError(format!("unknown unit in {s:?}: use ms, s or m"))),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| ParseError(format!("{s:?}: {e}")))
}

impl FromStr for Strategy {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "one-for-one" => Ok(Self::OneForOne),
            "one-for-all" => Ok(Self::OneForAll),
            "rest-for-one" => Ok(Self::RestForOne),
            _ => Err(ParseError(format!(
                "unknown strategy {s:?}: one-for-one, one-for-all or rest-for-one"
            ))),
        }
    }
}

impl fmt::Display for Intensity {
    /// `N/Ts`: at most N restarts in T seconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.max_restarts, self.within.as_secs_f64())
    }
}

impl fmt::Display for AgentPolicy {
    /// `permanent 3/5s`, with `handler<Nms` when handlers have a deadline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let restart = match self.restart {
            RestartType::Permanent => "permanent",
            RestartType::Transient => "transient",
            RestartType::Temporary => "temporary",
        };
        write!(f, "{restart} {}", self.intensity)?;
        if let Some(t) = self.handler_timeout {
            write!(f, " handler<{}ms", t.as_millis())?;
        }
        Ok(())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OneForOne => "one-for-one",
            Self::OneForAll => "one-for-all",
            Self::RestForOne => "rest-for-one",
        })
    }
}

impl FromStr for RestartType {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permanent" => Ok(Self::Permanent),
            "transient" => Ok(Self::Transient),
            "temporary" => Ok(Self::Temporary),
            _ => Err(ParseError(format!(
                "unknown restart type {s:?}: permanent, transient or temporary"
            ))),
        }
    }
}

impl FromStr for Intensity {
    type Err = ParseError;
    /// `N/T`, e.g. `3/5s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, t) = s
            .split_once('/')
            .ok_or_else(|| ParseError(format!("{s:?} must be N/T, e.g. 3/5s")))?;
        let max_restarts = n
            .trim()
            .parse()
            .map_err(|_| ParseError(format!("{n:?} is not a number of restarts")))?;
        let within = parse_duration(t)?;
        if within.is_zero() {
            return Err(ParseError("the window of N/T must be longer than 0".into()));
        }
        Ok(Self {
            max_restarts,
            within,
        })
    }
}

impl FromStr for Backoff {
    type Err = ParseError;
    /// `MIN..MAX`, e.g. `100ms..10s`, or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self::none());
        }
        let (a, b) = s.split_once("..").ok_or_else(|| {
            ParseError(format!("{s:?} must be MIN..MAX, e.g. 100ms..10s, or none"))
        })?;
        let (min, max) = (parse_duration(a)?, parse_duration(b)?);
        if min > max {
            return Err(ParseError(format!(
                "backoff minimum {a} is above its maximum {b}"
            )));
        }
        Ok(Self {
            min,
            max,
            ..Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_policy_keeps_what_it_was_given() {
        let d = AgentPolicy::default();
        assert_eq!(StoredPolicy::from(d), StoredPolicy::default());
        assert_eq!(StoredPolicy::from(d).get(), d);
        let custom = AgentPolicy {
            restart: RestartType::Temporary,
            ..d
        };
        assert_eq!(StoredPolicy::from(custom).get(), custom);
        assert_ne!(StoredPolicy::from(custom), StoredPolicy::default());
    }

    #[test]
    fn cli_forms_parse_and_bad_ones_say_why() {
        assert_eq!("3/5s".parse::<Intensity>().unwrap(), Intensity::default());
        assert_eq!(
            "one-for-all".parse::<Strategy>().unwrap(),
            Strategy::OneForAll
        );
        assert_eq!(
            "transient".parse::<RestartType>().unwrap(),
            RestartType::Transient
        );
        let b: Backoff = "100ms..10s".parse().unwrap();
        assert_eq!(
            (b.min, b.max),
            (Duration::from_millis(100), Duration::from_secs(10))
        );
        assert_eq!("none".parse::<Backoff>().unwrap(), Backoff::none());
        assert!("3"
            .parse::<Intensity>()
            .unwrap_err()
            .to_string()
            .contains("N/T"));
        assert!("10s..1s".parse::<Backoff>().is_err());
        assert!("sometimes".parse::<RestartType>().is_err());
    }

    #[test]
    fn backoff_doubles_caps_and_spreads() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(10),
            jitter: 0.0,
        };
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(1));
        let j = Backoff { jitter: 0.5, ..b };
        for r in [0.0, 0.3, 0.99] {
            let d = j.delay(1, r);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(150),
                "{d:?}"
            );
        }
        assert_eq!(Backoff::none().delay(5, 0.7), Duration::ZERO);
    }
}
