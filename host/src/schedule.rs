//! When saved exports run: standard cron expressions, evaluated in UTC.

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};

/// A parsed cron expression: five fields (minute hour day-of-month month day-of-week), an
/// optional leading seconds field, or a nickname such as `@hourly`.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
}

impl Schedule {
    /// Parses `text`, with an error that says what a schedule looks like.
    pub fn parse(text: &str) -> Result<Schedule> {
        let cron = croner::parser::CronParser::new().parse(text).map_err(|e| {
            anyhow!(
                "the schedule `{text}` is not a cron expression ({e}); write five fields, minute hour day-of-month month day-of-week, in UTC, e.g. `0 6 * * *` for 06:00 every day"
            )
        })?;
        let schedule = Schedule { cron };
        if schedule.next_after(Utc::now()).is_none() {
            anyhow::bail!(
                "the schedule `{text}` never fires (no date matches it, e.g. the 30th of February); nothing would ever run"
            );
        }
        Ok(schedule)
    }

    /// The first time strictly after `after` that the schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The schedule in words, e.g. "At 06:00".
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standard_expressions_and_refuses_others_clearly() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let daily = Schedule::parse("0 6 * * *").unwrap();
        assert_eq!(
            daily.next_after(at("2026-11-23T07:00:00Z")),
            Some(at("2026-11-24T06:00:00Z"))
        );
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            every_second.next_after(at("2026-11-23T07:00:00Z")),
            Some(at("2026-11-23T07:00:01Z"))
        );
        assert!(Schedule::parse("@hourly").is_ok());
        for bad in ["every day", "61 * * * *", "* * *", ""] {
            let err = Schedule::parse(bad).unwrap_err().to_string();
            assert!(err.contains("is not a cron expression"), "{bad}: {err}");
        }
        for never in ["0 0 30 2 *", "0 0 31 4 *"] {
            let err = Schedule::parse(never).unwrap_err().to_string();
            assert!(err.contains("never fires"), "{never}: {err}");
        }
    }
}
