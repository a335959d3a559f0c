//! `every`, `window` and `jitter`: a rotation schedule as written at one
//! level of the config (`[rotation]`, `[environments.ENV]`, `[[key]]`).

use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::value::{duration, positive_duration};
use crate::rotation::schedule::{Schedule, Window};

/// `every`, `window` and `jitter` as set at one level (`[rotation]`, an
/// environment, a `[[key]]`): each may be left to the level below.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScheduleParts {
    /// `every`: `Some(None)` is `every = "off"` (no schedule here, whatever
    /// the levels below say).
    pub every: Option<Option<Duration>>,
    /// `window`.
    pub window: Option<Window>,
    /// `jitter`.
    pub jitter: Option<Duration>,
}

impl ScheduleParts {
    /// Reads `every`, `window` and `jitter` of a table.
    pub(super) fn read(
        src: &Source<'_>,
        every: Option<Spanned<String>>,
        window: Option<Spanned<String>>,
        jitter: Option<Spanned<String>>,
    ) -> Result<ScheduleParts, ConfigError> {
        let every = match every {
            None => None,
            Some(v) if v.get_ref() == "off" => Some(None),
            Some(v) => Some(Some(positive_duration(src, &v, "every")?)),
        };
        let window = match window {
            None => None,
            Some(v) => Some(Window::parse(v.get_ref()).map_err(|e| {
                src.invalid(
                    &v.span(),
                    format!("{e} (at {}; the times are in the agent's time zone)", src.at(&v.span())),
                )
            })?),
        };
        Ok(ScheduleParts {
            every,
            window,
            jitter: jitter.map(|v| duration(src, &v, "jitter")).transpose()?,
        })
    }

    /// Whether `every` is set to a period here.
    pub fn schedules(&self) -> bool {
        matches!(self.every, Some(Some(_)))
    }

    /// The schedule these levels make, the first listed first.
    pub(super) fn resolve(levels: &[&ScheduleParts]) -> Option<Schedule> {
        let every = levels.iter().find_map(|l| l.every)??;
        Some(Schedule {
            every,
            window: levels.iter().find_map(|l| l.window.clone()),
            jitter: levels.iter().find_map(|l| l.jitter).unwrap_or_default(),
        })
    }
}
