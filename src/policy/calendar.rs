//! UTC calendar arithmetic for counter periods. Periods are keyed by their UTC date so that a
//! counter's key says which day it belongs to when an operator reads the store.

use time::{Date, Month, OffsetDateTime, Time, macros::format_description};

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

/// `YYYY-MM` of the UTC month containing `unix_secs`.
pub fn month_key(unix_secs: u64) -> String {
    utc_date(unix_secs)
        .format(format_description!("[year]-[month]"))
        .expect("date formatting cannot fail for a valid date")
}

/// `YYYY-MM` of the `back`-th month before the one containing `unix_secs`.
pub fn month_key_before(unix_secs: u64, back: u32) -> String {
    let date = utc_date(unix_secs);
    let index = date.year() * 12 + i32::from(u8::from(date.month())) - 1 - back as i32;
    format!(
        "{:04}-{:02}",
        index.div_euclid(12),
        index.rem_euclid(12) + 1
    )
}

/// Unix time of the first second of the next UTC month.
pub fn next_month_start(unix_secs: u64) -> u64 {
    let date = utc_date(unix_secs);
    let (year, month) = match date.month() {
        Month::December => (date.year() + 1, Month::January),
        m => (date.year(), m.next()),
    };
    Date::from_calendar_date(year, month, 1)
        .map(|d| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp() as u64)
        .unwrap_or(u64::MAX)
}

/// Seconds from `unix_secs` until the next UTC month starts.
pub fn secs_until_next_month(unix_secs: u64) -> u64 {
    next_month_start(unix_secs).saturating_sub(unix_secs)
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
        assert_eq!(month_key(1_798_761_599), "2026-12");
        assert_eq!(month_key(1_798_761_600), "2027-01");
        assert_eq!(next_month_start(1_798_761_599), 1_798_761_600);
        assert_eq!(secs_until_next_month(1_798_761_599), 1);
        // The first second of a month belongs to it; the next month starts a whole month later.
        assert_eq!(next_month_start(1_798_761_600), 1_798_761_600 + 31 * 86_400);
        assert_eq!(month_key_before(1_798_761_600, 1), "2026-12");
        assert_eq!(month_key_before(1_798_761_600, 13), "2025-12");
    }

    #[test]
    fn february_has_its_own_length() {
        // 2028-02-01T00:00:00Z -> 2028-03-01 (leap year, 29 days).
        assert_eq!(next_month_start(1_832_976_000) - 1_832_976_000, 29 * 86_400);
    }
}
