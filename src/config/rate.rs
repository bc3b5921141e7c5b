//! Rates in the configuration: the login endpoints' limits ([`Rate`]) and the scope of the
//! outbound Pleo budget ([`RateLimitScope`]).

use std::fmt;
use std::time::Duration;

/// A rate: `burst` requests at once, then one every `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Time between requests at the sustained rate.
    pub interval: Duration,
    /// Requests allowed back to back.
    pub burst: u32,
}

impl Rate {
    /// `count` per `per`, with a burst of `count`.
    pub fn per(count: u32, per: Duration) -> Option<Self> {
        (count > 0).then(|| Self {
            interval: per / count,
            burst: count,
        })
    }

    /// Parses `"N/s"`, `"N/m"` or `"N/h"`; `"off"` (or `"0"`) is no limit.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") || text == "0" {
            return Ok(None);
        }
        let invalid = || format!("not a rate ({text:?}); use e.g. \"60/m\", \"200/s\" or \"off\"");
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        Self::per(count, per).map(Some).ok_or_else(invalid)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match (self.interval * self.burst).as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.burst)
    }
}

/// Whose calls share one Pleo rate budget (`pleo.rate_limit_scope`). Pleo does not say what
/// its limit counts, so the operator chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitScope {
    /// One budget per subject (company or organisation): the default.
    Subject,
    /// One budget for the whole OAuth client, every subject together.
    Client,
}

impl RateLimitScope {
    /// The name used in configuration (`"subject"`, `"client"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Client => "client",
        }
    }

    /// Parses the configuration value.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "subject" => Ok(Self::Subject),
            "client" => Ok(Self::Client),
            _ => Err(format!(
                "must be \"subject\" (one budget per company or organisation) or \"client\" \
                 (one for the whole OAuth client) (got {text:?})"
            )),
        }
    }
}
