//! UTC calendar arithmetic for counter periods. Periods are keyed by their UTC date so that a
//! counter's key says which day it belongs to when an operator reads the store.

use time::{Date, OffsetDateTime, macros::format_description};

const SECS_PER_DAY: u64 = 86_400;

/// The UTC date containing `unix_secs`.
pub fn utc_date(unix_secs: u64) -> Date {
    OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .map(|t| t.date())
        .unwrap_or(Date::MIN)
}

/// `YYYY-MM-DD` of the UTC day containing `unix_secs`.
pub fn day_key(unix_secs: u64) -> String {
    utc_date(unix_secs)
        .format(format_description!("[year]-[month]-[day]"))
        .expect("date formatting cannot fail for a valid date")
}

/// Seconds from `unix_secs` until the next UTC midnight (1..=86400).
pub fn secs_until_next_day(unix_secs: u64) -> u64 {
    SECS_PER_DAY - unix_secs % SECS_PER_DAY
}

/// Unix time of the next UTC midnight after `unix_secs`.
pub fn next_day_start(unix_secs: u64) -> u64 {
    unix_secs + secs_until_next_day(unix_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-21T23:59:59Z and the second after it.
    const LAST_SECOND: u64 = 1_795_305_599;

    #[test]
    fn day_rolls_over_at_utc_midnight() {
        assert_eq!(day_key(LAST_SECOND), "2026-11-21");
        assert_eq!(day_key(LAST_SECOND + 1), "2026-11-22");
        assert_eq!(secs_until_next_day(LAST_SECOND), 1);
        assert_eq!(secs_until_next_day(LAST_SECOND + 1), 86_400);
        assert_eq!(next_day_start(LAST_SECOND), LAST_SECOND + 1);
    }

    #[test]
    fn month_and_year_boundaries() {
        assert_eq!(day_key(1_798_761_599), "2026-12-31");
        assert_eq!(day_key(1_798_761_600), "2027-01-01");
    }
}
